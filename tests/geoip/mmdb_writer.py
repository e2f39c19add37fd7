#!/usr/bin/python3
"""A small MaxMind DB writer, and the GeoIP test databases built with it.

    python3 tests/geoip/mmdb_writer.py OUTDIR

writes into OUTDIR (created if need be), from the tables in networks.py:

    GeoLite2-Country-Test.mmdb   country databases: country,
    GeoIP2-Country-Test.mmdb     registered_country, continent
    GeoLite2-City-Test.mmdb      the same plus city, location (doubles),
                                 subdivisions (an array), postal
    GeoLite2-ASN-Test.mmdb       autonomous_system_number/_organization
    GeoIP2-City-Test-Invalid-Node-Count.mmdb     broken on purpose: metadata
                                 node_count 100000, far more than the file
    GeoIP2-City-Test-Broken-Double-Format.mmdb   broken on purpose: the
                                 City database with each location.latitude
                                 and .longitude a 5-byte "double" holding
                                 text
    LICENSE-MIT                  the licence of the data (also a file that is
                                 not a database, for the tests)

Python 3 standard library only, deterministic (same bytes every run), well
under a second.

The format (https://maxmind.github.io/MaxMind-DB/): a binary search tree
over the address bits, each node two records of 24, 28 or 32 bits; 16 zero
bytes; the data section; "\\xab\\xcd\\xefMaxMind.com" and the metadata map.
Databases here are IPv6 (ip_version 6): IPv4 networks live under ::/96, and
::ffff:0:0/96, 2001::/32 and 2002::/16 lead to the same IPv4 subtree, as in
MaxMind's own files. Repeated values in the data section are written once
and reached through pointers.
"""

import ipaddress
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import networks  # noqa: E402  (the tables beside this file)

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
# Fixed, so that every run writes the same bytes (2025-01-01T00:00:00Z).
BUILD_EPOCH = 1735689600

# ---- data section ---------------------------------------------------------

T_POINTER, T_STRING, T_DOUBLE, T_BYTES, T_UINT16, T_UINT32, T_MAP = range(1, 8)
T_INT32, T_UINT64, T_UINT128, T_ARRAY = 8, 9, 10, 11
T_BOOL, T_FLOAT = 14, 15


class Uint16(int):
    """An int written as uint16 (plain ints are uint32, or uint64/uint128
    when too big)."""


class Uint32(int):
    pass


class Uint64(int):
    pass


class Uint128(int):
    pass


class Int32(int):
    pass


class Float(float):
    """A float written as a 4-byte float (plain floats are doubles)."""


class Raw(bytes):
    """Bytes written as they are, control byte included: for broken
    databases."""


def _int_type(v):
    if isinstance(v, bool):
        return T_BOOL
    for cls, t in ((Uint16, T_UINT16), (Uint32, T_UINT32), (Uint64, T_UINT64),
                   (Uint128, T_UINT128), (Int32, T_INT32)):
        if isinstance(v, cls):
            return t
    if v < 0:
        raise ValueError("negative int %d: use Int32" % v)
    return T_UINT32 if v < 1 << 32 else T_UINT64 if v < 1 << 64 else T_UINT128


_INT_LIMITS = {T_UINT16: 1 << 16, T_UINT32: 1 << 32, T_UINT64: 1 << 64,
               T_UINT128: 1 << 128}


def _control(type_, size):
    """The control byte(s) of a value of this type and payload size."""
    if size < 29:
        first, extra = size, b""
    elif size < 29 + 256:
        first, extra = 29, bytes([size - 29])
    elif size < 285 + 65536:
        first, extra = 30, struct.pack(">H", size - 285)
    elif size < 65821 + (1 << 24):
        first, extra = 31, struct.pack(">I", size - 65821)[1:]
    else:
        raise ValueError("value too large: %d bytes" % size)
    if type_ <= 7:
        return bytes([type_ << 5 | first]) + extra
    return bytes([first, type_ - 7]) + extra


def _pointer(offset):
    if offset < 1 << 11:
        return bytes([0x20 | offset >> 8, offset & 0xff])
    if offset < 2048 + (1 << 19):
        v = offset - 2048
        return bytes([0x28 | v >> 16]) + struct.pack(">H", v & 0xffff)
    if offset < 526336 + (1 << 27):
        v = offset - 526336
        return bytes([0x30 | v >> 24]) + struct.pack(">I", v)[1:]
    return b"\x38" + struct.pack(">I", offset)


def _key(value):
    """A hashable identity for a value, its type included (True is not 1,
    Uint16(5) is not 5)."""
    if isinstance(value, Raw):
        return ("raw", bytes(value))
    if isinstance(value, dict):
        return ("map", tuple((_key(k), _key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_key(v) for v in value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return (_int_type(value), int(value))
    if isinstance(value, float):
        return ("float" if isinstance(value, Float) else "double", value)
    return (type(value).__name__, value)


class DataSection:
    """Values appended one after the other. With pointers on, a value
    already written (a map, an array, a string of 3 bytes or more) is
    written again as a pointer to its first copy; pointers never point at
    pointers. The metadata is written with pointers off, as the format
    wants."""

    def __init__(self, pointers=True):
        self.buf = bytearray()
        self.pointers = pointers
        self.seen = {}

    def add(self, value):
        """Writes value unless it is there already; returns its offset."""
        k = _key(value)
        if self.pointers and k in self.seen:
            return self.seen[k]
        off = len(self.buf)
        self._write(value, k)
        return off

    def _write(self, value, k=None):
        if self.pointers:
            k = _key(value) if k is None else k
            if k in self.seen:
                self.buf += _pointer(self.seen[k])
                return
            worth = (isinstance(value, (dict, list, tuple))
                     or (isinstance(value, str)
                         and len(value.encode("utf-8")) >= 3))
            if worth and not isinstance(value, Raw):
                self.seen[k] = len(self.buf)
        b = self.buf
        if isinstance(value, Raw):
            b += value
        elif isinstance(value, dict):
            b += _control(T_MAP, len(value))
            for key, v in value.items():
                if not isinstance(key, str):
                    raise TypeError("map key %r is not a string" % (key,))
                self._write(key)
                self._write(v)
        elif isinstance(value, (list, tuple)):
            b += _control(T_ARRAY, len(value))
            for v in value:
                self._write(v)
        elif isinstance(value, str):
            s = value.encode("utf-8")
            b += _control(T_STRING, len(s)) + s
        elif isinstance(value, bytes):
            b += _control(T_BYTES, len(value)) + value
        elif isinstance(value, bool):
            b += _control(T_BOOL, int(value))
        elif isinstance(value, int):
            t = _int_type(value)
            if t == T_INT32:
                if not -(1 << 31) <= value < 1 << 31:
                    raise ValueError("int32 out of range: %d" % value)
                s = struct.pack(">i", value).lstrip(b"\0") if value >= 0 \
                    else struct.pack(">i", value)
            else:
                if not 0 <= value < _INT_LIMITS[t]:
                    raise ValueError("%d does not fit type %d" % (value, t))
                s = value.to_bytes(16, "big").lstrip(b"\0")
            b += _control(t, len(s)) + s
        elif isinstance(value, Float):
            b += _control(T_FLOAT, 4) + struct.pack(">f", value)
        elif isinstance(value, float):
            b += _control(T_DOUBLE, 8) + struct.pack(">d", value)
        else:
            raise TypeError("cannot write %r" % (value,))


# ---- search tree -----------------------------------------------------------

class _Leaf:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _parse_network(text):
    """A CIDR prefix or a "first-last" range, as a list of networks."""
    if "-" in text:
        first, last = (ipaddress.ip_address(p.strip()) for p in text.split("-"))
        return list(ipaddress.summarize_address_range(first, last))
    return [ipaddress.ip_network(text)]


class Writer:
    """One database: insert networks with their records, then write()."""

    IPV4_ALIASES = ("::ffff:0:0/96", "2001::/32", "2002::/16")

    def __init__(self, database_type, description, languages=("en",),
                 record_size=28, ip_version=6, alias_ipv4=True):
        if record_size not in (24, 28, 32):
            raise ValueError("record_size must be 24, 28 or 32")
        if ip_version not in (4, 6):
            raise ValueError("ip_version must be 4 or 6")
        self.database_type = database_type
        self.description = description
        self.languages = list(languages)
        self.record_size = record_size
        self.ip_version = ip_version
        self.alias_ipv4 = alias_ipv4 and ip_version == 6
        self.width = 128 if ip_version == 6 else 32
        # A node is [left, right]; a child is a node, a _Leaf (a data
        # record) or None (no data).
        self.root = [None, None]
        self._aliased = False

    def insert(self, network, record):
        """Maps network (a CIDR or "first-last" string, or an ipaddress
        network) to record. A network inserted later replaces what earlier
        ones said about its addresses."""
        nets = _parse_network(network) if isinstance(network, str) \
            else [network]
        for net in nets:
            self._insert(net, _Leaf(record))

    def _bits(self, net):
        addr, plen = int(net.network_address), net.prefixlen
        if net.version == 4 and self.ip_version == 6:
            plen += 96  # ::a.b.c.d, where libmaxminddb looks IPv4 up
        elif net.version == 6 and self.ip_version == 4:
            raise ValueError("%s in an IPv4 database" % net)
        if plen == 0:
            raise ValueError("cannot insert a whole address space")
        return addr, plen

    def _insert(self, net, leaf):
        addr, plen = self._bits(net)
        node = self.root
        for depth in range(plen):
            bit = addr >> (self.width - 1 - depth) & 1
            if depth == plen - 1:
                node[bit] = leaf
                return
            child = node[bit]
            if not isinstance(child, list):
                # Split a record (or an empty one) that covered more.
                child = node[bit] = [child, child]
            node = child

    def _alias(self, prefix, target):
        net = ipaddress.ip_network(prefix)
        addr, plen = int(net.network_address), net.prefixlen
        node = self.root
        for depth in range(plen - 1):
            bit = addr >> (127 - depth) & 1
            child = node[bit]
            if child is None:
                child = node[bit] = [None, None]
            elif not isinstance(child, list):
                raise ValueError("data over the aliased network %s" % prefix)
            node = child
        bit = addr >> (128 - plen) & 1
        if node[bit] is not None:
            raise ValueError("data inside the aliased network %s" % prefix)
        node[bit] = target

    def to_bytes(self, node_count=None):
        """The database file. node_count overrides the metadata's (to
        write a broken file)."""
        if self.alias_ipv4 and not self._aliased:
            self._aliased = True
            v4 = self.root
            for _ in range(96):
                if not isinstance(v4, list):
                    break
                v4 = v4[0]
            if v4 is not None:
                for prefix in self.IPV4_ALIASES:
                    self._alias(prefix, v4)

        # Number the nodes breadth first (the root is 0); an aliased node
        # is one node, reached by several paths.
        ids = {id(self.root): 0}
        order = [self.root]
        for node in order:
            for child in node:
                if isinstance(child, list) and id(child) not in ids:
                    ids[id(child)] = len(order)
                    order.append(child)
        count = len(order)

        data = DataSection()
        rec_max = (1 << self.record_size) - 1
        tree = bytearray()
        for node in order:
            pair = []
            for child in node:
                if child is None:
                    r = count
                elif isinstance(child, list):
                    r = ids[id(child)]
                else:
                    r = count + 16 + data.add(child.value)
                if r > rec_max:
                    raise ValueError("record %d does not fit %d bits"
                                     % (r, self.record_size))
                pair.append(r)
            left, right = pair
            if self.record_size == 24:
                tree += left.to_bytes(3, "big") + right.to_bytes(3, "big")
            elif self.record_size == 28:
                tree += (left & 0xffffff).to_bytes(3, "big")
                tree.append((left >> 24) << 4 | right >> 24)
                tree += (right & 0xffffff).to_bytes(3, "big")
            else:
                tree += left.to_bytes(4, "big") + right.to_bytes(4, "big")

        meta = DataSection(pointers=False)
        meta.add({
            "binary_format_major_version": Uint16(2),
            "binary_format_minor_version": Uint16(0),
            "build_epoch": Uint64(BUILD_EPOCH),
            "database_type": self.database_type,
            "description": {"en": self.description},
            "ip_version": Uint16(self.ip_version),
            "languages": self.languages,
            "node_count": Uint32(count if node_count is None else node_count),
            "record_size": Uint16(self.record_size),
        })
        if METADATA_MARKER in data.buf:
            raise ValueError("the data section holds the metadata marker")
        return bytes(tree) + bytes(16) + bytes(data.buf) + METADATA_MARKER + \
            bytes(meta.buf)

    def write(self, path, node_count=None):
        """Writes the file whole or not at all (a new file renamed over)."""
        blob = self.to_bytes(node_count)
        tmp = "%s.tmp%d" % (path, os.getpid())
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
        return len(blob)


# ---- the test databases ----------------------------------------------------

def _rows(table):
    """The lines of a text table, split, without comments and blanks."""
    for line in table.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield line.split()


def _names(names):
    """{"de": ..., "en": ...} from "de|en|...", in networks.LANGUAGES
    order; an empty name is left out."""
    return {lang: n for lang, n in zip(networks.LANGUAGES, names.split("|"))
            if n}


def _country(code):
    gid, _, eu, names = networks.COUNTRIES[code]
    c = {"geoname_id": gid}
    if eu:
        c["is_in_european_union"] = True
    c["iso_code"] = code
    c["names"] = _names(names)
    return c


def _continent(code):
    gid, names = networks.CONTINENTS[code]
    return {"code": code, "geoname_id": gid, "names": _names(names)}


def country_record(country, registered=None, represented=None,
                   continent=None):
    """A GeoIP2/GeoLite2 Country record: fields in the order MaxMind's
    files have them (sorted)."""
    rec = {}
    if country is not None:
        continent = networks.COUNTRIES[country][1]
    if continent is not None:
        rec["continent"] = _continent(continent)
    if country is not None:
        rec["country"] = _country(country)
        rec["registered_country"] = _country(registered or country)
    if represented is not None:
        r = _country(represented)
        r["type"] = "military"
        rec["represented_country"] = r
    return rec


def _country_rows(table):
    """(network, record, country) for each line of a country table."""
    for cols in _rows(table):
        net, rest = cols[0], cols[1:]
        opts = dict(c.split("=", 1) for c in rest if "=" in c)
        codes = [c for c in rest if "=" not in c]
        country = None if codes[0] == "-" else codes[0]
        registered = codes[1] if len(codes) > 1 else country
        registered = None if registered == "-" else registered
        if "anycast" in opts:
            yield net, {"traits": {"is_anycast": True}}, None
            continue
        rec = country_record(country, registered, opts.get("represented"),
                             opts.get("continent"))
        yield net, rec, country


def _text_double(v):
    """A "double" of 5 bytes of text ("51.75"): what a broken writer might
    leave."""
    text = ("%.4f" % v)[:5].encode()
    return Raw(_control(T_DOUBLE, len(text)) + text)


def _location(lat, lon, radius, tz=None, metro=None, broken=False):
    double = _text_double if broken else float
    loc = {"accuracy_radius": Uint16(radius), "latitude": double(lat),
           "longitude": double(lon)}
    if metro is not None:
        loc["metro_code"] = Uint16(metro)
    if tz is not None:
        loc["time_zone"] = tz
    return loc


def city_record(c, broken=False):
    """A GeoLite2-City record from a CITY_NETWORKS entry."""
    rec = {}
    if "city" in c:
        gid, name = c["city"]
        rec["city"] = {"geoname_id": gid, "names": {"en": name}}
    rec.update(country_record(c["country"], c.get("registered"),
                              c.get("represented")))
    rec["location"] = _location(*c["location"], broken=broken)
    if "postal" in c:
        rec["postal"] = {"code": c["postal"]}
    if "subdivisions" in c:
        rec["subdivisions"] = [
            {"geoname_id": gid, "iso_code": iso, "names": {"en": name}}
            for gid, iso, name in c["subdivisions"]]
    return {k: rec[k] for k in sorted(rec)}


def _description(kind):
    return "%s Test Database (fake GeoIP2 data, for example purposes only)" \
        % kind


def build_country(lite=True):
    kind = "GeoLite2-Country" if lite else "GeoIP2-Country"
    w = Writer(kind, _description(kind.replace("-", " ")),
               languages=networks.LANGUAGES)
    tables = [networks.COUNTRY_NETWORKS]
    if not lite:
        tables.append(networks.GEOIP2_COUNTRY_EXTRA)
    for table in tables:
        for net, rec, _ in _country_rows(table):
            w.insert(net, rec)
    return w


def _city_writer(kind, description, broken_doubles=False):
    """A City database: country-level networks, then city-level ones."""
    w = Writer(kind, description, languages=networks.LANGUAGES)
    for net, rec, country in _country_rows(networks.COUNTRY_NETWORKS):
        lat, lon, tz = networks.COUNTRY_LOCATIONS[country or "-"]
        rec["location"] = _location(lat, lon, 100, tz, broken=broken_doubles)
        w.insert(net, {k: rec[k] for k in sorted(rec)})
    for c in networks.CITY_NETWORKS:
        w.insert(c["network"], city_record(c, broken=broken_doubles))
    return w


def build_city():
    return _city_writer("GeoLite2-City", _description("GeoLite2 City"))


def build_asn():
    w = Writer("GeoLite2-ASN", _description("GeoLite2 ASN"), record_size=24)
    for cols in _rows(networks.ASN_NETWORKS):
        rec = {"autonomous_system_number": Uint32(int(cols[1]))}
        if len(cols) > 2:
            rec["autonomous_system_organization"] = " ".join(cols[2:])
        w.insert(cols[0], rec)
    return w


def build_broken_double():
    """The City database with every location.latitude and .longitude a
    "double" of 5 bytes of text where 8 bytes of IEEE 754 belong:
    libmaxminddb opens it, and fails only the lookups that decode one."""
    return _city_writer(
        "GeoIP2-City", _description("GeoIP2 City Test Broken Double Format"),
        broken_doubles=True)


DATABASES = [
    # file name, builder, metadata node_count override
    ("GeoLite2-Country-Test.mmdb", lambda: build_country(lite=True), None),
    ("GeoIP2-Country-Test.mmdb", lambda: build_country(lite=False), None),
    ("GeoLite2-City-Test.mmdb", build_city, None),
    ("GeoLite2-ASN-Test.mmdb", build_asn, None),
    # 100000 28-bit nodes: a 700000-byte tree, in a file of some 20 KB.
    ("GeoIP2-City-Test-Invalid-Node-Count.mmdb",
     lambda: _city_writer("GeoIP2-City",
                          _description("GeoIP2 City Test Invalid Node Count")),
     100000),
    ("GeoIP2-City-Test-Broken-Double-Format.mmdb", build_broken_double, None),
]


def write_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    sizes = {}
    for name, build, node_count in DATABASES:
        sizes[name] = build().write(os.path.join(outdir, name), node_count)
    shutil.copyfile(os.path.join(HERE, "LICENSE-MIT"),
                    os.path.join(outdir, "LICENSE-MIT"))
    return sizes


def main(argv):
    if len(argv) != 2 or argv[1].startswith("-"):
        sys.stderr.write("usage: %s OUTDIR\n" % argv[0])
        return 2
    sizes = write_all(argv[1])
    print("mmdb_writer: %d GeoIP test databases in %s"
          % (len(sizes), argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
