/* Checks of a backward's outputs against the float64 reference, with the tolerances of test_backward.c (its
 * comment gives their reasons). */
#ifndef BNK_TESTS_GRADIENT_CHECK_H
#define BNK_TESTS_GRADIENT_CHECK_H

#include <stdint.h>

#include "bnk.h"

#define SUM_TOLERANCE 1e-5
#define DX_TOLERANCE 1e-5
#define DX_FP32_ERROR 2e-6
#define INFERENCE_DX_TOLERANCE 1e-6

/* dx of the training backward: within DX_TOLERANCE scale[c] (float32), or 1 ulp of the rounded reference plus
 * DX_FP32_ERROR scale[c] (16-bit), scale[c] = |gamma[c]| invstd[c] being the factor dx carries. */
void check_training_dx(const char *what, const bnk_tensor_desc *desc, const double *got, const double *want,
                       const double *scale);

/* dx = g gamma invstd of frozen statistics: relative INFERENCE_DX_TOLERANCE (float32) or 1 ulp (16-bit). */
void check_inference_dx(const char *what, const bnk_tensor_desc *desc, const double *got, const double *want);

/* dgamma and dbeta within SUM_TOLERANCE (|reference| + sqrt(sum of squared terms)), the terms being g and
 * g (x - center[c]) scale[c]. */
void check_gradient_sums(const char *what, const bnk_tensor_desc *desc, const double *got_dgamma,
                         const double *got_dbeta, const double *g, const double *x, const double *center,
                         const double *scale, const double *dgamma, const double *dbeta);

#endif
