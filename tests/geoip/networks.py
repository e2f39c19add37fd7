"""The networks and records behind the GeoIP test databases.

mmdb_writer.py turns these tables into MaxMind DB files. The facts (which
network is in which country, which AS announces it) are a subset of
MaxMind's public test data (github.com/maxmind/MaxMind-DB, test-data/, MIT
licensed, see LICENSE-MIT): fake data for tests, never for production.

What the tests rely on (tests/unit/test_access.c,
tests/integration/test_identity_access.py):

    address          country  ASN
    81.2.69.142      GB       -
    216.160.83.56    US       209
    89.160.20.112    SE       29518
    67.43.156.1      BT       35908
    2001:218::1      JP       -
    1.128.0.1        -        1221
    12.81.92.1       -        7018
    2600:6000::1     -        237
    2a02:d500::1     -        -      (a record with a continent only)
    127.0.0.1, 10.0.0.1, ::1: not in any database

The tables are text, one network a line; "#" starts a comment. A network is
a CIDR prefix or a range "first-last" (split into prefixes). Where networks
overlap, the one listed later wins over its part of the earlier one.
"""

# Languages of the names below, in the order the name strings list them.
LANGUAGES = ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]

# ISO code: (GeoNames id, continent, member of the EU, names "de|en|...|zh-CN",
# an empty one left out)
COUNTRIES = {
    "AE": (290557, "AS", False,
           "Vereinigte Arabische Emirate|United Arab Emirates|"
           "Emiratos Árabes Unidos|Émirats Arabes Unis|アラブ首長国連邦|"
           "Emirados Árabes Unidos|Объединенные Арабские Эмираты|阿拉伯联合酋长国"),
    "AL": (783754, "EU", False,
           "Albanien|Albania|Albania|Albanie|アルバニア共和国|Albânia|Албания|阿尔巴尼亚"),
    "AM": (174982, "AS", False,
           "Armenien|Armenia|Armenia|Arménie|アルメニア共和国|Armênia|Армения|亚美尼亚"),
    "AT": (2782113, "EU", True,
           "Österreich|Austria|Austria|Autriche|オーストリア共和国|Áustria|Австрия|"
           "奥地利"),
    "AZ": (587116, "AS", False,
           "Aserbaidschan|Azerbaijan|Azerbaiyán|Azerbaïdjan|アゼルバイジャン共和国|"
           "Azerbaijão|Азербайджан|阿塞拜疆"),
    "BE": (2802361, "EU", True,
           "Belgien|Belgium|Bélgica|Belgique|ベルギー王国|Bélgica|Бельгия|比利时"),
    "BG": (732800, "EU", True,
           "Bulgarien|Bulgaria|Bulgaria|Bulgarie|ブルガリア共和国|Bulgária|Болгария|"
           "保加利亚"),
    "BH": (290291, "AS", False,
           "Bahrain|Bahrain|Bahréin|Bahreïn|バーレーン|Bahrain|Бахрейн|巴林"),
    "BT": (1252634, "AS", False,
           "Bhutan|Bhutan|Bután|Bhutan|ブータン王国|Butão|Бутан|不丹"),
    "BY": (630336, "EU", False,
           "Weißrussland|Belarus|Bielorrusia|Biélorussie|ベラルーシ共和国|"
           "Bielo-Rússia|Беларусь|白俄罗斯"),
    "CH": (2658434, "EU", False,
           "Schweiz|Switzerland|Suiza|Suisse|スイス連邦|Suíça|Швейцария|瑞士"),
    "CN": (1814991, "AS", False,
           "China|People's Republic of China|República Popular China|Chine|"
           "中国|China|Китай|中国"),
    "CZ": (3077311, "EU", True,
           "Tschechische Republik|Czech Republic|República Checa|Tchéquie|"
           "チェコ共和国|República Checa|Чешская Республика|捷克共和国"),
    "DE": (2921044, "EU", True,
           "Deutschland|Germany|Alemania|Allemagne|ドイツ連邦共和国|Alemanha|"
           "Германия|德国"),
    "DK": (2623032, "EU", True,
           "Dänemark|Denmark|Dinamarca|Danemark|デンマーク王国|Dinamarca|Дания|丹麦"),
    "ES": (2510769, "EU", True,
           "Spanien|Spain|España|Espagne|スペイン|Espanha|Испания|西班牙"),
    "FI": (660013, "EU", True,
           "Finnland|Finland|Finlandia|Finlande|フィンランド共和国|Finlândia|"
           "Финляндия|芬兰"),
    "FR": (3017382, "EU", True,
           "Frankreich|France|Francia|France|フランス共和国|França|Франция|法国"),
    "GB": (2635167, "EU", False,
           "Vereinigtes Königreich|United Kingdom|Reino Unido|Royaume-Uni|"
           "イギリス|Reino Unido|Великобритания|英国"),
    "GI": (2411586, "EU", False,
           "Gibraltar|Gibraltar|Gibraltar|Gibraltar|ジブラルタル|Gibraltar|"
           "Гибралтар|"),
    "HK": (1819730, "AS", False,
           "Hongkong|Hong Kong|Hong Kong|Hong Kong|香港|Hong Kong|Гонконг|香港"),
    "HU": (719819, "EU", True,
           "Ungarn|Hungary|Hungría|Hongrie|ハンガリー共和国|Hungria|Венгрия|匈牙利"),
    "IE": (2963597, "EU", True,
           "Irland|Ireland|República de Irlanda|Irlande|アイルランド|Irlanda|"
           "Ирландия|爱尔兰"),
    "IL": (294640, "AS", False,
           "Israel|Israel|Israel|Israël|イスラエル国|Israel|Израиль|以色列"),
    "IM": (3042225, "EU", False,
           "Insel Man|Isle of Man|Isla de Man|Île de Man|マン島|Ilha de Man|"
           "Мэн, о-в|曼岛"),
    "IR": (130758, "AS", False,
           "Iran (Islamische Republik)|Iran|Irán (República Islámica)|"
           "Iran (République islamique de)|イラン・イスラム共和国|"
           "República Islâmica do Irã|Иран|伊朗伊斯兰共和国"),
    "IT": (3175395, "EU", True,
           "Italien|Italy|Italia|Italie|イタリア共和国|Itália|Италия|意大利"),
    "JO": (248816, "AS", False,
           "Jordanien|Hashemite Kingdom of Jordan|Jordania|Jordanie|"
           "ヨルダン・ハシミテ王国|Jordânia|Иордания|约旦"),
    "JP": (1861060, "AS", False,
           "Japan|Japan|Japón|Japon|日本|Japão|Япония|日本"),
    "KR": (1835841, "AS", False,
           "Republik Korea|South Korea|Corea, República de|Corée du Sud|"
           "大韓民国|Coréia, República da|Южная Корея|韩国"),
    "KW": (285570, "AS", False,
           "Kuwait|Kuwait|Kuwait|Koweït|クウェート|Kuwait|Кувейт|科威特"),
    "LB": (272103, "AS", False,
           "Libanon|Lebanon|Líbano|Liban|レバノン共和国|Líbano|Ливан|黎巴嫩"),
    "LY": (2215636, "AF", False,
           "Libysch-Arabische Dschamahirija|Libya|Libia, República Árabe|"
           "Libye|社会主義人民リビア・アラブ国|Líbia Árabe Jamahiriya|Ливия|阿拉伯利比亚民众国"),
    "NL": (2750405, "EU", True,
           "Niederlande|Netherlands|Holanda|Pays-Bas|オランダ王国|Países Baixos|"
           "Нидерланды|荷兰"),
    "NO": (3144096, "EU", False,
           "Norwegen|Norway|Noruega|Norvège|ノルウェー王国|Noruega|Норвегия|挪威"),
    "PH": (1694008, "AS", False,
           "Philippinen|Philippines|Filipinas|Philippines|フィリピン共和国|"
           "Filipinas|Филиппины|菲律宾"),
    "PL": (798544, "EU", True,
           "Polen|Poland|Polonia|Pologne|ポーランド共和国|Polônia|Польша|波兰"),
    "RO": (798549, "EU", True,
           "Rumänien|Romania|Rumanía|Roumanie|ルーマニア|Romênia|Румыния|罗马尼亚"),
    "RS": (6290252, "EU", False,
           "Serbien|Serbia|Serbia|Serbie|セルビア|Sérvia|Сербия|塞尔维亚"),
    "RU": (2017370, "EU", False,
           "Russland|Russia|Rusia|Russie|ロシア|Rússia|Россия|俄罗斯"),
    "SA": (102358, "AS", False,
           "Saudi-Arabien|Saudi Arabia|Arabia Saudita|Arabie saoudite|"
           "サウジアラビア王国|Arábia Saudita|Саудовская Аравия|沙特阿拉伯"),
    "SE": (2661886, "EU", True,
           "Schweden|Sweden|Suecia|Suède|スウェーデン王国|Suécia|Швеция|瑞典"),
    "TR": (298795, "AS", False,
           "Türkei|Turkey|Turquía|Turquie|トルコ共和国|Turquia|Турция|土耳其"),
    "TW": (1668284, "AS", False,
           "Taiwan|Taiwan|Taiwán|Taïwan|台湾|Taiwan|Тайвань|台湾"),
    "UA": (690791, "EU", False,
           "Ukraine|Ukraine|Ucrania|Ukraine|ウクライナ共和国|Ucrânia|Украина|乌克兰"),
    "US": (6252001, "NA", False,
           "USA|United States|Estados Unidos|États-Unis|アメリカ合衆国|"
           "Estados Unidos|США|美国"),
}

CONTINENTS = {
    "AF": (6255146,
           "Afrika|Africa|África|Afrique|アフリカ|África|Африка|非洲"),
    "AS": (6255147,
           "Asien|Asia|Asia|Asie|アジア|Ásia|Азия|亚洲"),
    "EU": (6255148,
           "Europa|Europe|Europa|Europe|ヨーロッパ|Europa|Европа|欧洲"),
    "NA": (6255149,
           "Nordamerika|North America|América del Norte|Amérique du Nord|"
           "北アメリカ|América do Norte|Северная Америка|北美洲"),
}

# The networks of the Country databases, and City's country-level ones:
#   network  country  [registered country, if not the country]  [extras]
# Extras: represented=CC (represented_country, a military base abroad),
# continent=XX (a record with a continent only). "-" is no country.
COUNTRY_NETWORKS = """
2.125.160.216/29   GB FR
50.114.0.0/22      US
67.43.156.0/24     BT RO
81.2.69.142/31     GB US
81.2.69.144/28     GB US
81.2.69.160/27     GB US
81.2.69.192/28     GB US
89.160.20.112/28   SE DE
89.160.20.128/25   SE DE
111.235.160.0/22   CN
202.196.224.0/20   PH represented=US
214.78.0.0/19      US
216.160.83.56/29   US GB
217.65.48.0/29     GI
2001:218::/32      JP
2001:220::/32      KR
2001:230::/32      KR
2001:238::/32      TW
2001:240::/32      JP
2001:250::/31      CN
2001:252::/32      CN
2001:254::/32      CN
2001:256::/32      CN
2001:258::/32      JP
2001:260::/32      JP
2001:268::/32      JP
2001:270::/32      KR
2001:278::/32      JP
2001:280::/32      KR
2001:288::/32      TW
2001:290::/32      KR
2001:298::/32      JP
2001:2a0::/32      JP
2001:2a8::/32      JP
2001:2b0::/32      KR
2001:2b8::/32      KR
2001:2c0::/32      JP
2001:2c8::/32      JP
2001:2d8::/32      KR
2001:2e0::/32      HK
2001:2e8::/32      JP
2001:2f0::/32      JP
2001:2f8::/32      JP
2001:480::/43      US
2a02:cf40::/29     NO
2a02:cf80::/29     IL
2a02:cfc0::/29     FR
2a02:d000::/29     CH
2a02:d040::/29     SE
2a02:d080::/29     BH
2a02:d0c0::/29     RU
2a02:d100::/29     PL
2a02:d140::/29     NO
2a02:d180::/29     DE
2a02:d1c0::/29     IT
2a02:d200::/29     FI
2a02:d240::/29     BY
2a02:d280::/29     CZ
2a02:d2c0::/29     IR
2a02:d300::/29     UA
2a02:d340::/29     FR
2a02:d380::/29     IR
2a02:d3c0::/29     GB
2a02:d400::/29     HU
2a02:d440::/29     SE
2a02:d480::/29     DE
2a02:d4c0::/30     FI
2a02:d4e0::/30     DE
2a02:d500::/29     - - continent=EU
2a02:d540::/29     GB
2a02:d580::/29     FR
2a02:d5c0::/29     ES
2a02:d600::/29     DE
2a02:d640::/29     FR
2a02:d680::/30     GB
2a02:d6a0::/30     DE
2a02:d6c0::/29     BG
2a02:d700::/29     DE
2a02:d740::/29     CH
2a02:d780::/29     IR
2a02:d7c0::/29     FR
2a02:d800::/29     RO
2a02:d840::/29     RU
2a02:d880::/29     RU
2a02:d8c0::/29     NO
2a02:d900::/29     SE
2a02:d940::/29     BE
2a02:d980::/29     TR
2a02:d9c0::/29     TR
2a02:da00::/29     DE
2a02:da40::/29     GB
2a02:da80::/29     AT
2a02:dac0::/29     RU
2a02:db00::/29     DE
2a02:db40::/29     RO
2a02:db80::/29     RU
2a02:dbc0::/29     RU
2a02:dc00::/29     RU
2a02:dc40::/29     TR
2a02:dc80::/29     RU
2a02:dcc0::/29     UA
2a02:dd00::/29     AL
2a02:dd40::/29     GB
2a02:dd80::/29     SE
2a02:ddc0::/29     RU
2a02:de00::/29     RU
2a02:de40::/29     IL
2a02:de80::/29     RU
2a02:dec0::/29     LB
2a02:df00::/29     IR
2a02:df40::/29     TR
2a02:df80::/29     GB
2a02:dfc0::/29     IR
2a02:e000::/29     FR
2a02:e040::/29     NL
2a02:e080::/29     KW
2a02:e0c0::/29     CH
2a02:e100::/29     GB
2a02:e140::/29     PL
2a02:e180::/29     GB
2a02:e1c0::/29     NL
2a02:e200::/30     AT
2a02:e220::/30     SA
2a02:e240::/29     DE
2a02:e280::/29     DE
2a02:e2c0::/29     IT
2a02:e300::/29     BY
2a02:e340::/29     NO
2a02:e380::/29     IT
2a02:e3c0::/29     FR
2a02:e400::/29     SE
2a02:e440::/29     DE
2a02:e480::/29     RU
2a02:e4c0::/29     NL
2a02:e500::/29     FR
2a02:e540::/29     RS
2a02:e580::/29     NO
2a02:e5c0::/29     RU
2a02:e600::/30     FR
2a02:e620::/30     RU
2a02:e640::/29     FR
2a02:e680::/29     JO
2a02:e6c0::/29     RU
2a02:e700::/29     LY
2a02:e740::/29     DE
2a02:e780::/29     TR
2a02:e7c0::/29     PL
2a02:e800::/29     DE
2a02:e840::/29     RU
2a02:e880::/29     RU
2a02:e900::/29     IE
2a02:e940::/29     RO
2a02:e980::/29     IL
2a02:e9c0::/29     SE
2a02:ea00::/29     CH
2a02:ea40::/29     GB
2a02:ea80::/29     PL
2a02:eac0::/29     PL
2a02:eb00::/29     RU
2a02:eb40::/29     GB
2a02:eb80::/29     RU
2a02:ebc0::/29     FR
2a02:ec00::/29     FR
2a02:ec40::/29     RU
2a02:ec80::/29     - - continent=EU
2a02:ecc0::/29     AZ
2a02:ed00::/29     NO
2a02:ed40::/29     TR
2a02:ed80::/29     DE
2a02:edc0::/29     SA
2a02:ee00::/29     UA
2a02:ee40::/29     RU
2a02:ee80::/29     NL
2a02:eec0::/29     SE
2a02:ef00::/29     RU
2a02:ef40::/29     RU
2a02:ef80::/29     TR
2a02:efc0::/29     RU
2a02:f000::/29     CZ
2a02:f040::/29     BH
2a02:f080::/30     UA
2a02:f0a0::/30     GB
2a02:f0c0::/29     JO
2a02:f100::/29     GB
2a02:f140::/29     DE
2a02:f180::/29     FR
2a02:f1c0::/29     UA
2a02:f200::/29     DE
2a02:f240::/29     IR
2a02:f280::/29     FR
2a02:f2c0::/29     RU
2a02:f300::/29     NO
2a02:f340::/29     DE
2a02:f380::/29     GB
2a02:f3c0::/29     PL
2a02:f400::/29     AE
2a02:f440::/29     GB
2a02:f480::/29     NO
2a02:f4c0::/29     ES
2a02:f500::/29     RU
2a02:f540::/30     GB
2a02:f560::/30     RU
2a02:f580::/29     AM
2a02:f5c0::/29     NL
2a02:f600::/29     NL
2a02:f640::/29     NL
2a02:f680::/29     RU
2a02:f6c0::/29     RU
2a02:f700::/29     LB
2a02:f740::/29     PL
2a02:f780::/29     SE
2a02:f7c0::/29     PL
2a02:f800::/29     RU
2a02:f840::/29     NL
2a02:f880::/29     DE
2a02:f8c0::/29     PL
2a02:f900::/29     IR
2a02:f940::/29     HU
2a02:f980::/29     GB
2a02:f9c0::/29     GB
2a02:fa00::/29     SA
2a02:fa40::/29     TR
2a02:fa80::/29     DE
2a02:fac0::/29     PL
2a02:fb00::/29     DE
2a02:fb40::/29     GB
2a02:fb80::/29     IT
2a02:fbc0::/29     PL
2a02:fc00::/29     SE
2a02:fc40::/29     DK
2a02:fc80::/29     NO
2a02:fcc0::/29     GB
2a02:fd00::/29     DE
2a02:fd40::/29     IT
2a02:fd80::/29     DK
2a02:fdc0::/29     AT
2a02:fe00::/29     NL
2a02:fe40::/29     GB
2a02:fe80::/29     IT
2a02:fec0::/29     GB
2a02:ff00::/29     IT
2a02:ff40::/29     IM
2a02:ff80::/29     DE
2a02:ffc0::/29     GI
"""

# GeoIP2-Country has these too (its 2001:220::/128 cuts a hole in KR's
# 2001:220::/32); anycast=1 is a record with only traits.is_anycast.
GEOIP2_COUNTRY_EXTRA = """
74.209.16.0/20     US
75.209.24.0/32     US
149.101.100.0/28   US GB
175.16.199.0/24    CN
214.1.1.0/24       -  -  anycast=1
214.78.120.0/22    US
2001:220::/128     SE DE
"""

# Where GeoLite2-City puts a network it knows only the country of:
# ISO code (or "-" for continent-only records): latitude, longitude, time
# zone (None: no time_zone field).
COUNTRY_LOCATIONS = {
    "-": (48.69096, 9.14062, "Europe/Vaduz"),
    "AE": (24.0, 54.0, "Asia/Dubai"),
    "AL": (41.0, 20.0, "Europe/Tirane"),
    "AM": (40.0, 45.0, "Asia/Yerevan"),
    "AT": (47.33333, 13.33333, "Europe/Vienna"),
    "AZ": (40.5, 47.5, "Asia/Baku"),
    "BE": (50.83333, 4.0, "Europe/Brussels"),
    "BG": (43.0, 25.0, "Europe/Sofia"),
    "BH": (26.0, 50.5, "Asia/Bahrain"),
    "BT": (27.5, 90.5, "Asia/Thimphu"),
    "BY": (53.0, 28.0, "Europe/Minsk"),
    "CH": (47.00016, 8.01427, "Europe/Zurich"),
    "CN": (35.0, 105.0, None),
    "CZ": (49.75, 15.0, "Europe/Prague"),
    "DE": (51.5, 10.5, "Europe/Berlin"),
    "DK": (56.0, 10.0, "Europe/Copenhagen"),
    "ES": (40.0, -4.0, None),
    "FI": (64.0, 26.0, "Europe/Helsinki"),
    "FR": (46.0, 2.0, "Europe/Paris"),
    "GB": (54.75844, -2.69531, "Europe/London"),
    "GI": (36.13333, -5.35, "Europe/Gibraltar"),
    "HK": (22.25, 114.16667, "Asia/Hong_Kong"),
    "HU": (47.0, 20.0, "Europe/Budapest"),
    "IE": (53.0, -8.0, "Europe/Dublin"),
    "IL": (31.5, 34.75, "Asia/Jerusalem"),
    "IM": (54.25, -4.5, "Europe/Isle_of_Man"),
    "IR": (32.0, 53.0, "Asia/Tehran"),
    "IT": (42.83333, 12.83333, "Europe/Rome"),
    "JO": (31.0, 36.0, "Asia/Amman"),
    "JP": (35.68536, 139.75309, "Asia/Tokyo"),
    "KR": (37.0, 127.5, "Asia/Seoul"),
    "KW": (29.5, 47.75, "Asia/Kuwait"),
    "LB": (33.83333, 35.83333, "Asia/Beirut"),
    "LY": (28.0, 17.0, "Africa/Tripoli"),
    "NL": (52.5, 5.75, "Europe/Amsterdam"),
    "NO": (62.0, 10.0, "Europe/Oslo"),
    "PH": (13.0, 122.0, "Asia/Manila"),
    "PL": (52.0, 20.0, "Europe/Warsaw"),
    "RO": (46.0, 25.0, "Europe/Bucharest"),
    "RS": (44.81892, 20.45998, "Europe/Belgrade"),
    "RU": (60.0, 100.0, None),
    "SA": (25.0, 45.0, "Asia/Riyadh"),
    "SE": (62.0, 15.0, "Europe/Stockholm"),
    "TR": (39.05901, 34.91155, "Europe/Istanbul"),
    "TW": (24.0, 121.0, "Asia/Taipei"),
    "UA": (49.0, 32.0, None),
    "US": (32.7203, -117.1552, "America/Los_Angeles"),
}

# GeoLite2-City's city-level networks, over the country-level ones above.
# location: (latitude, longitude, accuracy radius in km, time zone, metro
# code or None); subdivisions: (GeoNames id, ISO code, name), largest first.
CITY_NETWORKS = [
    {"network": "2.125.160.216/29", "country": "GB", "registered": "FR",
     "city": (2655045, "Boxford"),
     "subdivisions": [(6269131, "ENG", "England"),
                      (3333217, "WBK", "West Berkshire")],
     "location": (51.75, -1.25, 100, "Europe/London", None), "postal": "OX1"},
    {"network": "67.43.156.0/24", "country": "BT", "registered": "RO",
     "location": (27.5, 90.5, 534, "Asia/Thimphu", None)},
    {"network": "81.2.69.142/31", "country": "GB", "registered": "US",
     "city": (2643743, "London"), "subdivisions": [(6269131, "ENG", "England")],
     "location": (51.5142, -0.0931, 10, "Europe/London", None)},
    {"network": "81.2.69.144/28", "country": "GB", "registered": "US",
     "city": (2643743, "London"), "subdivisions": [(6269131, "ENG", "England")],
     "location": (51.5142, -0.0931, 3, "Europe/London", None)},
    {"network": "81.2.69.160/27", "country": "GB", "registered": "US",
     "city": (2643743, "London"), "subdivisions": [(6269131, "ENG", "England")],
     "location": (51.5142, -0.0931, 100, "Europe/London", None)},
    {"network": "81.2.69.192/28", "country": "GB", "registered": "US",
     "city": (2643743, "London"), "subdivisions": [(6269131, "ENG", "England")],
     "location": (51.5142, -0.0931, 100, "Europe/London", None)},
    {"network": "89.160.20.112/28", "country": "SE", "registered": "DE",
     "city": (2694762, "Link\u00f6ping"),
     "subdivisions": [(2685867, "E", "\u00d6sterg\u00f6tland County")],
     "location": (58.4167, 15.6167, 76, "Europe/Stockholm", None)},
    {"network": "89.160.20.128/25", "country": "SE", "registered": "DE",
     "city": (2694762, "Link\u00f6ping"),
     "subdivisions": [(2685867, "E", "\u00d6sterg\u00f6tland County")],
     "location": (58.4167, 15.6167, 76, "Europe/Stockholm", None)},
    {"network": "175.16.199.0/24", "country": "CN", "registered": "CN",
     "city": (2038180, "Changchun"),
     "subdivisions": [(2036500, "22", "Jilin Sheng")],
     "location": (43.88, 125.3228, 100, "Asia/Harbin", None)},
    {"network": "202.196.224.0/20", "country": "PH", "registered": "PH",
     "represented": "US",
     "location": (13.0, 122.0, 121, "Asia/Manila", None), "postal": "34021"},
    {"network": "214.78.0.0/19", "country": "US", "registered": "US",
     "city": (5391811, "San Diego"),
     "subdivisions": [(5332921, "CA", "California")],
     "location": (32.6783, -117.1291, 10, "America/Los_Angeles", 825),
     "postal": "92136"},
    {"network": "216.160.83.56/29", "country": "US", "registered": "GB",
     "city": (5803556, "Milton"),
     "subdivisions": [(5815135, "WA", "Washington")],
     "location": (47.2513, -122.3149, 22, "America/Los_Angeles", 819),
     "postal": "98354"},
]

# ASN networks: network or range, autonomous_system_number, organization (or
# nothing: some records have only the number).
ASN_NETWORKS = """
1.0.0.0/24                     15169  Google Inc.
1.128.0.0/11                   1221   Telstra Pty Ltd
12.81.92.0/22                  7018   AT&T Services
12.81.96.0-12.96.16.255        7018
15.0.0.0-16.255.255.255        71     Hewlett-Packard Company
18.0.0.0/8                     3      Massachusetts Institute of Technology
23.32.0.0/11                   35994  Akamai Technologies, Inc.
23.192.0.0/11                  35994  Akamai Technologies, Inc.
27.192.0.0/11                  4837   CNCGROUP China169 Backbone
31.64.0.0/10                   12576  Orange Personal Communications Services
31.224.0.0/11                  3320   Deutsche Telekom AG
35.0.0.0-35.159.255.255        237    Merit Network Inc.
36.192.0.0/11                  9394   China TieTong Telecommunications Corporation
38.0.0.0/8                     174    Cogent Communications
39.32.0.0/11                   45595  Pakistan Telecom Company Limited
39.64.0.0/11                   4837   CNCGROUP China169 Backbone
39.192.0.0/10                  23693  PT. Telekomunikasi Selular
44.0.0.0/8                     7377   University of California at San Diego
49.64.0.0/11                   4134   Chinanet
50.128.0.0/9                   7922   Comcast Cable Communications, Inc.
53.0.0.0/8                     31399  Daimler Autonomous System
55.0.0.0/8                     721    DoD Network Information Center
57.0.0.0/8                     2647   SITA
59.0.0.0/11                    4766   Korea Telecom
60.64.0.0-60.159.255.255       17676  Softbank BB Corp.
64.17.248.0/21                 33224
65.23.96.0/19                  11456
65.115.241.0-65.116.13.255     209
65.128.0.0/11                  209    Qwest Communications Company, LLC
65.192.0.0/11                  701    MCI Communications Services, Inc. d/b/a Verizon Business
66.92.0.0/15                   23504
67.43.149.0-67.43.159.255      35908
67.160.0.0/11                  7922   Comcast Cable Communications, Inc.
69.218.35.0-69.219.83.255      7132
70.46.21.0-70.46.255.255       11456
70.160.0.0/11                  22773  Cox Communications Inc.
70.192.0.0/11                  6167   Cellco Partnership DBA Verizon Wireless
70.224.0.0/11                  7018   AT&T Services, Inc.
71.96.0.0/11                   701    MCI Communications Services, Inc. d/b/a Verizon Business
71.128.0.0-71.134.77.255       7018   AT&T Services, Inc.
71.134.78.0-71.140.197.255     7132   AT&T Services, Inc.
71.140.198.0-71.159.255.255    7018   AT&T Services, Inc.
72.96.0.0/11                   6167   Cellco Partnership DBA Verizon Wireless
72.192.0.0/11                  22773  Cox Communications Inc.
73.0.0.0/8                     7922   Comcast Cable Communications, Inc.
74.0.32.0-74.0.167.255         18566
74.160.0.0/11                  6389   BellSouth.net Inc.
74.224.0.0/11                  6389   BellSouth.net Inc.
75.0.0.0/11                    7018   AT&T Services, Inc.
75.77.40.0-75.77.255.255       11456
75.192.0.0/10                  6167   Cellco Partnership DBA Verizon Wireless
76.96.0.0-76.159.255.255       7922   Comcast Cable Communications, Inc.
76.224.0.0/11                  7018   AT&T Services, Inc.
77.128.0.0/11                  15557  Societe Francaise du Radiotelephone S.A
78.26.64.0-78.26.125.255       28929  ASDASD srl
78.192.0.0/10                  12322  Free SAS
79.192.0.0/10                  3320   Deutsche Telekom AG
80.128.0.0/11                  3320   Deutsche Telekom AG
81.128.0.0/11                  2856   BTnet UK Regional network
82.99.0.0/18                   12552  IP-Only
83.206.10.0-83.206.65.255      3215   France Telecom - Orange
84.128.0.0/10                  3320   Deutsche Telekom AG
85.88.0.0/19                   33984  Surfplanet GmbH
87.128.0.0/10                  3320   Deutsche Telekom AG
89.80.0.0/12                   5410   Bouygues Telecom ISP
89.160.0.0/17                  29518  Bredband2 AB
91.0.0.0/10                    3320   Deutsche Telekom AG
93.192.0.0/10                  3320   Deutsche Telekom AG
96.128.0.0/10                  7922   Comcast Cable Communications, Inc.
97.0.0.0/10                    6167   Cellco Partnership DBA Verizon Wireless
97.128.0.0/9                   6167   Cellco Partnership DBA Verizon Wireless
98.192.0.0/10                  7922   Comcast Cable Communications, Inc.
104.64.0.0/10                  35994  Akamai Technologies, Inc.
111.0.0.0/10                   9808   Guangdong Mobile Communication Co.Ltd.
112.0.0.0/10                   9808   Guangdong Mobile Communication Co.Ltd.
117.128.0.0/10                 9808   Guangdong Mobile Communication Co.Ltd.
120.192.0.0/10                 9808   Guangdong Mobile Communication Co.Ltd.
126.0.0.0/8                    17676  Softbank BB Corp.
132.0.0.0/10                   721    DoD Network Information Center
142.217.208.0-142.217.238.255  35911
145.128.0.0/10                 1103   SURFnet, The Netherlands
149.101.100.0/28               6167   CELLCO-PART
172.128.0.0/10                 1668   AOL Transit Data Network
174.192.0.0/10                 6167   Cellco Partnership DBA Verizon Wireless
176.128.0.0/10                 12844  Bouygues Telecom
180.0.0.0/10                   4713   NTT Communications Corporation
183.0.0.0/10                   4134   Chinanet
183.192.0.0/10                 9808   Guangdong Mobile Communication Co.Ltd.
208.110.194.0-208.110.223.255  11025
208.192.0.0/10                 701    MCI Communications Services, Inc. d/b/a Verizon Business
214.0.0.0-215.127.255.255      721    DoD Network Information Center
216.83.161.0-216.83.191.255    7381   SunGard Availability Services USA
216.160.26.0-216.160.206.255   209
219.0.0.0/10                   17676  Softbank BB Corp.
220.0.0.0/10                   17676  Softbank BB Corp.
222.229.128.0-222.230.255.255  2519   JPNIC
2001:1700::/27                 6730   Sunrise Communications AG
2001:1c00::/23                 9143   Ziggo B.V.
2001:2000::/20                 1299   TeliaSonera International Carrier
2001:4540::/27                 9924   Taiwan Fixed Network, Telco and Network Service Provider.
2001:4580::/26                 4780   Digital United Inc.
2001:4600::/24                 2119   Telenor Norge AS
2001:5000::/24                 1273   Cable and Wireless Worldwide plc
2001:5100::/24                 2529   Now maintained by Cable & Wireless Worldwide
2001:5200::/23                 1273   Cable and Wireless Worldwide plc
2001:5400::/22                 1273   Cable and Wireless Worldwide plc
2001:8000::/20                 1221   Telstra Pty Ltd
2001:b000::/21                 17419  HiNet IPv6 Service Network.,
2003::/19                      3320   Deutsche Telekom AG
2400::/20                      4766   Korea Telecom
2400:2000::/20                 17676  Softbank BB Corp.
2400:4000::/22                 4713   NTT Communications Corporation
2401:8000::/26                 9919   New Century InfoComm Tech Co., Ltd.
2403:9900::/24                 17676  Softbank BB Corp.
2404::/26                      17709  Eastern Broadband Telecom Co.,Ltd
2408::/22                      55817  Nippon Telegraph and Telephone Corporation PF Labs
2409::/23                      55391  INTERNET MULTIFEED CO.
2409:200::/23                  55392  INTERNET MULTIFEED CO.
240b::/22                      2516   KDDI KDDI CORPORATION
240d::/27                      2527   So-net Entertainment Corporation
240e::/24                      4134   Chinanet
240f::/24                      2516   KDDI KDDI CORPORATION
2600:800::/27                  701    MCI Communications Services, Inc. d/b/a Verizon Business
2600:1400::/27                 31377  Akamai International B.V.
2600:5400::/27                 19108  Suddenlink Communications
2600:6000::/20                 237    Merit Network Inc.
2600:7000::/24                 6939   Hurricane Electric, Inc.
2602::/24                      209    NOVARTIS-DMZ-US
2602:300::/24                  7018   AT&T Services, Inc.
2800:2000::/20                 10318  S.A.
2806:1000::/24                 8151   Uninet S.A. de C.V.
2a00::/22                      3209   Vodafone GmbH
2a00:800::/25                  1257   TELE2
2a00:2000::/23                 5400   British Telecommunications plc
2a00:2200::/24                 5400   British Telecommunications plc
2a00:2300::/25                 5400   British Telecommunications plc
2a00:2380::/25                 2856   BTnet UK Regional network
2a01:2e0::/28                  8374   Polkomtel Sp. z o.o.
2a01:800::/24                  3209   Vodafone GmbH
2a01:c00::/26                  13184  Telefonica Germany GmbH & Co.OHG
2a01:e00::/26                  12322  Free SAS
2a01:1000::/21                 5617   Telekomunikacja Polska S.A.
2a01:2000::/20                 3269   Telecom Italia S.p.a.
2a01:c000::/19                 5511   Orange S.A.
2a02:1200::/27                 3303   Swisscom (Switzerland) Ltd
2a02:1400::/26                 2119   Telenor Norge AS
2a02:1800::/24                 6848   Telenet N.V.
2a02:2e00::/27                 12715  Jazz Telecom S.A.
2a02:3000::/23                 6805   Telefonica Germany GmbH & Co.OHG
2a02:8100::/27                 31334  Kabel Deutschland Vertrieb und Service GmbH
2a02:8200::/27                 9145   EWE TEL GmbH
2a02:8400::/25                 15557  Societe Francaise du Radiotelephone S.A
2a02:9000::/23                 3352   TELEFONICA DE ESPANA
2a02:a000::/26                 5432   Belgacom regional ASN
2a02:a200::/27                 6830   Liberty Global Operations B.V.
2a02:a300::/27                 6830   Liberty Global Operations B.V.
2a02:a400::/26                 1136   KPN Internet Solutions
2a02:a440::/26                 8737   Koninklijke KPN N.V.
2a02:a800::/26                 6739   Cableuropa - ONO
2a02:aa00::/27                 6830   Liberty Global Operations B.V.
2a04:2400::/27                 6830   Liberty Global Operations B.V.
2c0e::/20                      24863  LINKdotNET
2c0f:fc00::/27                 3741   IS
2c0f:ff40::/26                 10474  MWEB-10474
"""
