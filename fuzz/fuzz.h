/* fuzz.h -- the entry points of the fuzz targets.
 *
 * Owns: the names under which each fuzz_<target>.c exposes its one-input
 * function, so that two drivers can run it:
 *   - libFuzzer (ops/fuzz): IQP_FUZZ_ENTRY() defines LLVMFuzzerInitialize
 *     and LLVMFuzzerTestOneInput on top of them;
 *   - tests/check_fuzz_corpus.c (ops/test, normal and sanitizer builds,
 *     no clang needed): compiled with IQP_FUZZ_NO_LIBFUZZER, it replays
 *     every file of fuzz/corpus/<target>/ through them. An input that once
 *     crashed a target, saved into its corpus, is thereby a unit test.
 *
 * A target's checks abort() on failure; both drivers report that.
 * May not touch: anything but the code under test.
 */
#ifndef IQP_FUZZ_H
#define IQP_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int fuzz_event_init(void);
int fuzz_event_one(const uint8_t *data, size_t size);
int fuzz_config_init(void);
int fuzz_config_one(const uint8_t *data, size_t size);
int fuzz_redis_value_init(void);
int fuzz_redis_value_one(const uint8_t *data, size_t size);
int fuzz_logfile_init(void);
int fuzz_logfile_one(const uint8_t *data, size_t size);
int fuzz_client_init(void);
int fuzz_client_one(const uint8_t *data, size_t size);

#ifdef IQP_FUZZ_NO_LIBFUZZER
#define IQP_FUZZ_ENTRY(init, one)
#else
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
#define IQP_FUZZ_ENTRY(init, one)                                             \
    int LLVMFuzzerInitialize(int *argc, char ***argv) {                       \
        (void)argc;                                                           \
        (void)argv;                                                           \
        return init();                                                        \
    }                                                                         \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return one(data, size); }
#endif

#endif
