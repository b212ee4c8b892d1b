#include "tests/gradient_check.h"

#include <math.h>

#include "tests/harness.h"
#include "tests/reference.h"
#include "tests/storage.h"

void check_training_dx(const char *what, const bnk_tensor_desc *desc, const double *got, const double *want,
                       const double *scale) {
  const int64_t spatial = ref_spatial(desc);
  for (int64_t c = 0; c < desc->c; ++c)
    for (int64_t n = 0; n < desc->n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(desc, n, c, s);
        double expected = want[i], allowed = DX_TOLERANCE * scale[c];
        if (desc->dtype != BNK_FLOAT32) {
          expected = round_to_storage(desc->dtype, want[i]);
          allowed = storage_ulp(desc->dtype, expected) + DX_FP32_ERROR * scale[c];
        }
        if (!(fabs(got[i] - expected) <= allowed)) {
          cr_expect(0, "%s: dx[%lld] (n %lld, c %lld) = %.9g, reference %.9g (error %.3g > %.3g allowed)", what,
                    (long long)i, (long long)n, (long long)c, got[i], expected, fabs(got[i] - expected), allowed);
          return;
        }
      }
}

void check_inference_dx(const char *what, const bnk_tensor_desc *desc, const double *got, const double *want) {
  const int64_t elements = bnk_tensor_desc_elements(desc);
  if (desc->dtype == BNK_FLOAT32) expect_close(what, got, want, elements, 0.0, INFERENCE_DX_TOLERANCE);
  else expect_within_ulps(what, desc->dtype, got, want, elements, 1.0, 0.0);
}

void check_gradient_sums(const char *what, const bnk_tensor_desc *desc, const double *got_dgamma,
                         const double *got_dbeta, const double *g, const double *x, const double *center,
                         const double *scale, const double *dgamma, const double *dbeta) {
  const int64_t spatial = ref_spatial(desc);
  for (int64_t c = 0; c < desc->c; ++c) {
    double beta_squares = 0.0, gamma_squares = 0.0;
    for (int64_t n = 0; n < desc->n; ++n)
      for (int64_t s = 0; s < spatial; ++s) {
        const int64_t i = ref_offset(desc, n, c, s);
        const double term = g[i] * (x[i] - center[c]) * scale[c];
        beta_squares += g[i] * g[i];
        gamma_squares += term * term;
      }
    const double gamma_allowed = SUM_TOLERANCE * (fabs(dgamma[c]) + sqrt(gamma_squares));
    const double beta_allowed = SUM_TOLERANCE * (fabs(dbeta[c]) + sqrt(beta_squares));
    if (!(fabs(got_dgamma[c] - dgamma[c]) <= gamma_allowed) || !(fabs(got_dbeta[c] - dbeta[c]) <= beta_allowed)) {
      cr_expect(0,
                "%s: channel %lld: dgamma %.9g (reference %.9g, %.3g allowed), dbeta %.9g (reference %.9g, %.3g "
                "allowed)",
                what, (long long)c, got_dgamma[c], dgamma[c], gamma_allowed, got_dbeta[c], dbeta[c], beta_allowed);
      return;
    }
  }
}
