# fuzz/fuzz.mk -- builds the libFuzzer targets (run by ops/fuzz, not by
# hand: ops/fuzz passes LIB_SRCS, the list of library sources).
#
# Owns: the fuzz build, with clang, into $(O) (default _fuzz/). It is kept
# apart from the autotools build on purpose: every object here carries
# libFuzzer's coverage instrumentation and ASan + UBSan, which the normal
# and sanitizer builds must not.
#
# Library sources get -fsanitize=fuzzer-no-link (coverage, no main); each
# target links with -fsanitize=fuzzer, which brings libFuzzer's main().
# UBSan findings abort (-fno-sanitize-recover=all) so libFuzzer counts them
# as crashes.
O ?= _fuzz
CC := clang
TARGETS := event config redis_value logfile client
PKGS := jansson libutf8proc libzstd zlib hiredis libxxhash
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS)) -lm -lpthread
SAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
CFLAGS := -std=c11 -O1 -g -Wall -Wextra -D_GNU_SOURCE -I. $(PKG_CFLAGS) $(SAN) -pthread

LIB_OBJS := $(patsubst %.c,$(O)/obj/%.o,$(LIB_SRCS))
BINS := $(addprefix $(O)/fuzz_,$(TARGETS))

all: $(BINS)

$(O)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(O)/libiqpfuzz.a: $(LIB_OBJS)
	rm -f $@ && ar rcs $@ $^

# Targets are warning-free under clang: -Werror applies to them only (the
# library sources are held to -Werror by the gcc build already).
$(O)/fuzz_%: fuzz/fuzz_%.c $(O)/libiqpfuzz.a
	$(CC) $(CFLAGS) -Werror -fsanitize=fuzzer -MMD -MP -MF $@.d $< $(O)/libiqpfuzz.a $(PKG_LIBS) -o $@

.PHONY: all
-include $(LIB_OBJS:.o=.d) $(BINS:=.d)
