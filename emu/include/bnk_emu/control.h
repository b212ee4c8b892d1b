/*
 * bnk_emu/control.h - controls of the bnk host emulation of CUDA (plain C).
 *
 * Scheduling policy, worker count, the diagnostic of the last kernel
 * misuse, and the traffic meter.  See docs/emulation.md.
 */
#ifndef BNK_EMU_CONTROL_H
#define BNK_EMU_CONTROL_H

#ifdef __cplusplus
extern "C" {
#endif

/* Order in which the runnable fibers (CUDA threads) of a block are resumed
 * after every synchronisation point. */
typedef enum bnk_emu_schedule {
  BNK_EMU_FORWARD = 0, /* thread 0, 1, ..., n-1 (linear thread index) */
  BNK_EMU_REVERSE = 1, /* thread n-1, ..., 1, 0 */
  BNK_EMU_RANDOM = 2   /* a fresh permutation every round, seeded per block */
} bnk_emu_schedule;

/* Sets the schedule used by subsequent launches.  The seed matters only for
 * BNK_EMU_RANDOM; block b of a launch uses a stream derived from (seed, b),
 * so results do not depend on which worker ran the block.
 * Default: env BNK_EMU_SCHEDULE = forward | reverse | random | random:SEED
 * (random without a seed uses seed 0), else forward. */
void bnk_emu_set_schedule(bnk_emu_schedule kind, unsigned long long seed);

/* Returns the current schedule; stores its seed in *seed if seed != NULL. */
bnk_emu_schedule bnk_emu_get_schedule(unsigned long long *seed);

/* Number of OS worker threads that run blocks (the launching thread is one
 * of them).  n <= 0 restores the default: env BNK_EMU_WORKERS, else the
 * number of cores. */
void bnk_emu_set_workers(int n);
int bnk_emu_get_workers(void);

/* Number of SMs of the emulated device (1 to 132): what
 * cudaDevAttrMultiProcessorCount reports and what limits a cooperative
 * launch (blocks per SM x SMs).  Fewer SMs keep a full co-resident grid
 * small in tests.  n outside 1..132 restores the default: env BNK_EMU_SMS,
 * else 132. */
void bnk_emu_set_sm_count(int n);
int bnk_emu_get_sm_count(void);

/* Calls of cudaOccupancyMaxActiveBlocksPerMultiprocessor (every overload)
 * since the process started, on every thread: a test's way to see what a
 * library queries once and caches. */
unsigned long long bnk_emu_occupancy_queries(void);

/* Message of the last kernel misuse detected (partial barrier, deadlock,
 * bad warp-collective mask, __trap, ...), as
 * "file:line: what happened (block (x,y,z), threads ...)", or "" if none
 * since the last clear.  The pointer stays valid until the next misuse or
 * clear. */
const char *bnk_emu_last_diagnostic(void);
void bnk_emu_clear_diagnostic(void);

/* Traffic meter (docs/emulation.md, "Traffic meter").  Counts what kernel
 * code reads and writes in memory from cudaMalloc* / cudaMallocHost: per
 * launch, the distinct 32-byte sectors touched (summed over launches) and
 * the bytes requested.  cudaMemset* and cudaMemcpy* on that memory are
 * counted apart (copy_*).  Off by default (env BNK_EMU_TRAFFIC=1 turns it
 * on); metering makes kernels a few times slower. */
typedef struct bnk_emu_traffic {
  unsigned long long launches;           /* launches metered (for one allocation: launches that touched it) */
  unsigned long long read_sectors;       /* 32-byte sectors read, distinct within each launch */
  unsigned long long written_sectors;    /* 32-byte sectors written, distinct within each launch */
  unsigned long long read_bytes;         /* bytes requested by kernel loads */
  unsigned long long written_bytes;      /* bytes requested by kernel stores */
  unsigned long long copy_read_bytes;    /* cudaMemcpy* bytes read from metered memory */
  unsigned long long copy_written_bytes; /* cudaMemset* and cudaMemcpy* bytes written to it */
} bnk_emu_traffic;

void bnk_emu_set_traffic(int enabled);
int bnk_emu_get_traffic(void);
/* Zeroes every count (totals, last launch, per allocation). */
void bnk_emu_traffic_reset(void);
/* Sums over every launch metered since the last reset. */
void bnk_emu_traffic_total(bnk_emu_traffic *out);
/* The last launch metered (launches = 1; copies are not included). */
void bnk_emu_traffic_last_launch(bnk_emu_traffic *out);
/* The counts of the live allocation that starts at ptr since the last
 * reset; returns 0, or -1 (out untouched) if ptr starts no live
 * allocation. */
int bnk_emu_traffic_of(const void *ptr, bnk_emu_traffic *out);

#ifdef __cplusplus
}
#endif

#endif /* BNK_EMU_CONTROL_H */
