/* The tolerances against the float64 reference, in one place for bnk-bench (validation.c) and the PyTorch
 * peer (torch_peer.py reads the #defines of this file), so that both are held to the same bounds. */
#ifndef BNK_BENCHMARKS_TOLERANCES_H
#define BNK_BENCHMARKS_TOLERANCES_H

/* Tolerances against the float64 reference (docs/benchmarks.md explains each).
 *  - y and dx in float32: absolute, at the unit scale the data are drawn at.
 *  - y and dx in float16/bfloat16: one unit in the last place of the storage type (the float32 result is
 *    rounded once) plus a small absolute slack for results that land next to a rounding boundary.
 *  - per-channel outputs: relative to the quantity's natural scale (see check_channels). */
#define F32_ELEMENT_TOLERANCE 1e-5
#define SIXTEEN_BIT_ULPS 1.0
#define SIXTEEN_BIT_SLACK 1e-5
#define CHANNEL_TOLERANCE 1e-5
/* linear_bn: the float32 accumulation of in_features products, relative to the sum of their magnitudes (as
 * tests/test_fold.c allows bnk_linear_bn). */
#define LINEAR_ACCUMULATION_TOLERANCE 1e-5

#endif
