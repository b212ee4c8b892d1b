#include "tests/storage.h"

#include <math.h>
#include <string.h>

size_t storage_element_bytes(bnk_dtype dtype) { return dtype == BNK_FLOAT32 ? 4 : 2; }

const char *storage_name(bnk_dtype dtype) {
  switch (dtype) {
  case BNK_FLOAT32:
    return "f32";
  case BNK_FLOAT16:
    return "f16";
  case BNK_BFLOAT16:
    return "bf16";
  }
  return "unknown";
}

static uint16_t half_from_float(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;  /* NaN stays a (quiet) NaN */
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u; /* 65520 and up round to infinity */
  if (magnitude < 0x38800000u) {
    /* Below 2^-14 the half is subnormal, counted in units of 2^-24: scaling by 2^24 is exact, so the one
     * rounding is nearbyintf's, which rounds ties to even in the default rounding mode. */
    float below_normal;
    memcpy(&below_normal, &magnitude, sizeof below_normal);
    return sign | (uint16_t)nearbyintf(below_normal * 0x1p24f);
  }
  /* Rebias the exponent (127 -> 15) and keep the top 10 of 23 mantissa bits; a carry out of the mantissa
   * correctly bumps the exponent. */
  uint32_t half = (((magnitude >> 23) - 112u) << 10) | ((magnitude >> 13) & 0x3ffu);
  const uint32_t dropped = magnitude & 0x1fffu;
  if (dropped > 0x1000u || (dropped == 0x1000u && (half & 1u))) ++half;
  return sign | (uint16_t)half;
}

static double half_to_double(uint16_t half) {
  const double sign = (half & 0x8000u) ? -1.0 : 1.0;
  const int exponent = (half >> 10) & 0x1f;
  const int mantissa = half & 0x3ff;
  if (exponent == 0) return sign * ldexp(mantissa, -24);
  if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
  return sign * ldexp(1024 + mantissa, exponent - 25);
}

static uint16_t bfloat16_from_float(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* keep NaN a NaN */
  bits += 0x7fffu + ((bits >> 16) & 1u); /* round to nearest, ties to even, on the dropped 16 bits */
  return (uint16_t)(bits >> 16);
}

static double bfloat16_to_double(uint16_t bfloat) {
  const uint32_t bits = (uint32_t)bfloat << 16;
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

void storage_store(bnk_dtype dtype, void *base, int64_t index, float value) {
  switch (dtype) {
  case BNK_FLOAT32:
    ((float *)base)[index] = value;
    break;
  case BNK_FLOAT16:
    ((uint16_t *)base)[index] = half_from_float(value);
    break;
  case BNK_BFLOAT16:
    ((uint16_t *)base)[index] = bfloat16_from_float(value);
    break;
  }
}

double storage_load(bnk_dtype dtype, const void *base, int64_t index) {
  switch (dtype) {
  case BNK_FLOAT32:
    return ((const float *)base)[index];
  case BNK_FLOAT16:
    return half_to_double(((const uint16_t *)base)[index]);
  case BNK_BFLOAT16:
    return bfloat16_to_double(((const uint16_t *)base)[index]);
  }
  return NAN;
}

double storage_ulp(bnk_dtype dtype, double value) {
  const int mantissa_bits = dtype == BNK_FLOAT32 ? 23 : dtype == BNK_FLOAT16 ? 10 : 7;
  const int min_exponent = dtype == BNK_FLOAT16 ? -14 : -126;
  int exponent = 0;
  frexp(fabs(value), &exponent); /* |value| in [2^(exponent - 1), 2^exponent) */
  --exponent;
  if (value == 0.0 || exponent < min_exponent) exponent = min_exponent;
  return ldexp(1.0, exponent - mantissa_bits);
}
