# tollgate — build, run, test, fuzz, bench.
#
# Targets
#   make              build build/tollgate (optimised, with debug info)
#   make run          install missing Debian packages, build, make a local
#                     certificate, start with conf/tollgate.yaml
#   make test         install what the tests need, then run the unit and
#                     integration suites, plain and under ASan+UBSan (side
#                     by side where network namespaces can be made)
#   make test-unit    unit tests only (plain build)
#   make test-integration   integration tests only (plain build)
#   make test-asan    unit + integration tests under ASan+UBSan
#   make fuzz         build the libFuzzer targets and run each FUZZ_SECONDS
#   make bench        race tollgate against nginx and haproxy (bench/run)
#   make certs        write a self-signed ECDSA pair for localhost to conf/certs/
#                     (beside conf/tollgate.yaml, whose relative paths are
#                     relative to its own directory)
#   make install      install binary, example config, systemd unit and docs
#                     (PREFIX, DESTDIR)
#   make deps         install the Debian packages the build needs
#   make check-layers   check every #include against tools/layers.txt
#   make format-check   check the C files against .clang-format (CI runs it)
#   make format         rewrite the C files as .clang-format says
#   make clean
#
# Options
#   SANITIZE=address,undefined   build into build/sanitize with sanitizers
#   FUZZ_SECONDS=60              time per fuzz target for `make fuzz`
#   PYTEST_ARGS=...              extra arguments for pytest (e.g. -k tls -x)
#   PREFIX=/usr/local DESTDIR=   for `make install`
#   CONFIG=conf/tollgate.yaml    the config `make run` starts with

CC       ?= cc
PREFIX   ?= /usr/local
CONFIG   ?= conf/tollgate.yaml
FUZZ_SECONDS ?= 60
PYTEST_ARGS ?=

# Debian packages (tools/packages: one list for the Makefile, .ci/run and
# bench/run).
packages = $(shell sed -n 's/^$(1): *//p' tools/packages | sed 's/:[^ ]*//g')
BUILD_PKGS = $(call packages,build)
TEST_PKGS  = $(BUILD_PKGS) $(call packages,test)
APT_SUDO   = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PKGS     = libssl libcrypto hiredis libmaxminddb yaml-0.1 libnghttp2 jansson zlib libzstd libbrotlienc
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Werror \
              -Wno-missing-field-initializers -g -MMD -MP
LIBS     = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lev -lpthread -lm
# The unit tests decode what the encoders wrote (brotli's decoder is a
# library of its own; zlib and zstd decode with what the build links).
TEST_LIBS = $(shell pkg-config --libs libbrotlidec 2>/dev/null)

ifdef SANITIZE
BUILD    = build/sanitize
OPT      = -O1 -fno-omit-frame-pointer -fsanitize=$(SANITIZE) -fno-sanitize-recover=all
LDSAN    = -fsanitize=$(SANITIZE)
else
BUILD    = build
OPT      = -O2
LDSAN    =
endif

CFLAGS  ?=
CFLAGS  += $(CFLAGS_BASE) $(OPT) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDFLAGS += $(LDSAN)

SRCS     = $(wildcard src/*.c)
# Files built into the binary as C arrays (tools/embed): the dashboard page.
GEN_OBJS = $(BUILD)/obj/dashboard_page.o
OBJS     = $(SRCS:src/%.c=$(BUILD)/obj/%.o) $(GEN_OBJS)
LIB_OBJS = $(filter-out $(BUILD)/obj/main.o,$(OBJS))
UNIT_SRCS = $(wildcard tests/unit/test_*.c)
UNIT_BINS = $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: check-layers format-check format all run deps test-deps test test-unit test-integration test-asan \
        suite-builds unit-run integration-run fuzz bench certs install clean

all: $(BUILD)/tollgate

$(BUILD)/tollgate: $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/obj/%.o: src/%.c | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/gen/dashboard_page.c: src/dashboard.html tools/embed | $(BUILD)/gen
	tools/embed tg_dashboard_page $< > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/%.o: $(BUILD)/gen/%.c | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

# Unit tests may #include the module's .c to reach its statics; they link
# against every other object, so each test binary filters out the module it
# includes (named by the test: test_http1.c includes src/http1.c).
$(BUILD)/tests/test_%: tests/unit/test_%.c $(LIB_OBJS) | $(BUILD)/tests
	$(CC) $(CFLAGS) -Isrc -o $@ $< \
	    $(filter-out $(BUILD)/obj/$*.o,$(LIB_OBJS)) $(LDFLAGS) $(LIBS) $(TEST_LIBS)

$(BUILD)/obj $(BUILD)/tests $(BUILD)/gen:
	mkdir -p $@

-include $(OBJS:.o=.d) $(UNIT_BINS:=.d)

deps:
	@missing=$$(for p in $(BUILD_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    $(APT_SUDO) apt-get update && \
	    DEBIAN_FRONTEND=noninteractive $(APT_SUDO) apt-get install -y $$missing; \
	fi

test-deps:
	@missing=$$(for p in $(TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    $(APT_SUDO) apt-get update && \
	    DEBIAN_FRONTEND=noninteractive $(APT_SUDO) apt-get install -y $$missing; \
	fi

certs: conf/certs/localhost.crt

conf/certs/localhost.crt:
	mkdir -p conf/certs
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
	    -keyout conf/certs/localhost.key -out conf/certs/localhost.crt -days 825 \
	    -subj "/CN=localhost" \
	    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" 2>/dev/null
	chmod 600 conf/certs/localhost.key

run: deps
	$(MAKE) all certs
	./build/tollgate -c $(CONFIG)

# The whole suite: the module layers, then the plain and the sanitized
# runs, side by side in network namespaces of their own where the machine
# allows it (tools/run-suites says how).
test: test-deps
	tools/check-layers
	$(MAKE) suite-builds
	$(MAKE) SANITIZE=address,undefined suite-builds
	MAKE="$(MAKE)" tools/run-suites

suite-builds: $(BUILD)/tollgate $(UNIT_BINS) conf/certs/localhost.crt

test-unit: test-deps
	$(MAKE) unit-run

test-integration: test-deps
	$(MAKE) integration-run

test-asan: test-deps
	$(MAKE) SANITIZE=address,undefined unit-run integration-run

# Both write the GeoIP test databases (tests/geoip/mmdb_writer.py, well
# under a second) into $(BUILD)/geoip first, and read them through
# TG_GEOIP_DIR.
unit-run: $(UNIT_BINS)
	/usr/bin/python3 tests/geoip/mmdb_writer.py $(BUILD)/geoip
	@fail=0; for t in $(UNIT_BINS); do \
	    TG_GEOIP_DIR=$(CURDIR)/$(BUILD)/geoip ./$$t || fail=1; \
	done; exit $$fail

# The shipped config is tested too: it needs its local certificate.
integration-run: $(BUILD)/tollgate conf/certs/localhost.crt
	/usr/bin/python3 tests/geoip/mmdb_writer.py $(BUILD)/geoip
	TOLLGATE_BIN=$(CURDIR)/$(BUILD)/tollgate \
	TG_GEOIP_DIR=$(CURDIR)/$(BUILD)/geoip /usr/bin/python3 -m pytest -q \
	    -p no:cacheprovider tests/integration $(PYTEST_ARGS)

# Every include against tools/layers.txt (no module uses one above it).
check-layers:
	tools/check-layers

# Every C file as clang-format (.clang-format) would write it.
format-check:
	clang-format --dry-run -Werror src/*.c src/*.h tests/unit/*.c tests/unit/*.h tests/fuzz/*.c

# Rewrites the C files as format-check wants them.
format:
	clang-format -i src/*.c src/*.h tests/unit/*.c tests/unit/*.h tests/fuzz/*.c

fuzz:
	$(MAKE) -C tests/fuzz FUZZ_SECONDS=$(FUZZ_SECONDS) run

bench: all
	bench/run

install: all
	install -D -m 0755 build/tollgate $(DESTDIR)$(PREFIX)/bin/tollgate
	install -D -m 0644 conf/tollgate.yaml $(DESTDIR)/etc/tollgate/tollgate.yaml.example
	sed 's|/usr/local/|$(PREFIX)/|g' conf/tollgate.service > tollgate.service.tmp
	install -D -m 0644 tollgate.service.tmp $(DESTDIR)/lib/systemd/system/tollgate.service
	rm -f tollgate.service.tmp
	install -d $(DESTDIR)$(PREFIX)/share/doc/tollgate
	install -m 0644 README.md docs/*.md conf/grafana-dashboard.json \
	    $(DESTDIR)$(PREFIX)/share/doc/tollgate/

clean:
	rm -rf build
