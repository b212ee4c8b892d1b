/* Reporting: the table on stdout, the CSV and JSON files, and the summary that decides the exit status. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "benchmarks/bench.h"
#include "tests/storage.h"

static const char *const status_names[] = {"PASS", "FAIL", "n/a", "ERROR"};

static /* linear_bn's matrices have no layout. */
    const char *
    row_layout_name(const bench_row *row) {
  if (row->op == OP_LINEAR_BN) return "-";
  return row->layout == BNK_NCHW ? "nchw" : "nhwc";
}

/* The rows of one op on one case, once every implementation ran. x cuDNN: against the fastest cuDNN mode that
 * passed validation, so that a ratio never flatters bnk by comparing with cuDNN's slower mode. x unfused:
 * against the op's unfused sequence, when it passed validation. */
void set_ratios(bench_row *rows, int count) {
  double cudnn = NAN, unfused = NAN;
  for (int i = 0; i < count; ++i) {
    if (!rows[i].timed || rows[i].status != ROW_PASS) continue;
    if (is_cudnn(rows[i].impl) && (isnan(cudnn) || rows[i].median_us < cudnn)) cudnn = rows[i].median_us;
    if (rows[i].impl == unfused_impl(rows[i].op)) unfused = rows[i].median_us;
  }
  for (int i = 0; i < count; ++i) {
    rows[i].ratio_to_cudnn = rows[i].timed ? cudnn / rows[i].median_us : NAN;
    rows[i].ratio_to_unfused = rows[i].timed ? unfused / rows[i].median_us : NAN;
  }
}

/* The bytes columns, in both modes: the op's bytes in MB (10^6) and, for the epilogue ops, the ratio to the
 * unfused sequence's bytes ("B/unfused"). */
#define BYTES_HEADER_FORMAT "%10s %9s"

void print_table_header(const bench_env *env) {
  if (env->emulation) {
    printf("%-18s %-6s %-5s %-18s %-14s %-19s %-5s %9s %9s " BYTES_HEADER_FORMAT " %14s  %s\n", "op", "layout", "dtype",
           "shape", "run shape", "impl", "check", "max err", "chan err", "MB", "B/unfused", "H100 floor us",
           "traffic meter: bytes moved (32-byte sectors) and launches, not timed");
  } else {
    printf("%-18s %-6s %-5s %-18s %-19s %-5s %9s %9s %10s %19s %9s %8s %7s %9s " BYTES_HEADER_FORMAT " %9s %8s\n", "op",
           "layout", "dtype", "shape", "impl", "check", "max err", "chan err", "median us", "p10-p90 us", "min us",
           "GB/s", "% copy", "floor us", "MB", "B/unfused", "x unfused", "x cuDNN");
  }
}

/* An error for the table: "-" when the op has no such output or did not run, "inf" for a NaN output. */
static void format_error(const bench_row *row, double error, char *out, size_t size) {
  if (error < 0.0 || row->status == ROW_NOT_RUN || row->status == ROW_ERROR) snprintf(out, size, "-");
  else snprintf(out, size, "%.2e", error);
}

/* A ratio for the table, "-" when there is none. */
static void format_ratio(double ratio, char *out, size_t size) {
  if (isnan(ratio)) snprintf(out, size, "-");
  else snprintf(out, size, "%.2f", ratio);
}

void print_row(const bench_env *env, const bench_row *row) {
  char shape[64], run_shape[64], max_error[16], channel_error[16], megabytes[24], bytes_ratio[16];
  format_shape(&row->shape, shape, sizeof shape);
  format_shape(&row->run_shape, run_shape, sizeof run_shape);
  format_error(row, row->check.max_error, max_error, sizeof max_error);
  format_error(row, row->check.worst_channel_error, channel_error, sizeof channel_error);
  snprintf(megabytes, sizeof megabytes, "%.3f", row->bytes / 1e6);
  format_ratio(row->bytes_ratio_to_unfused, bytes_ratio, sizeof bytes_ratio);
  const char *check = status_names[row->status];
  const char *impl = impl_names[row->impl];
  const char *layout = row_layout_name(row);
  if (env->emulation) {
    /* No time in emulation; a row that did not run says why in its place ("n/a: needs a GPU"). */
    /* No time in emulation: the traffic meter's bytes of the run shape against that shape's byte floor. */
    char traffic[96] = "";
    if (row->status != ROW_NOT_RUN && row->check.metered_bytes >= 0.0)
      snprintf(traffic, sizeof traffic, "moved %.3f MB = %.1f%% of the run shape's floor, %lld launch%s",
               row->check.metered_bytes / 1e6, 100.0 * row->check.metered_bytes / row->run_bytes, row->check.launches,
               row->check.launches == 1 ? "" : "es");
    printf("%-18s %-6s %-5s %-18s %-14s %-19s %-5s %9s %9s " BYTES_HEADER_FORMAT " %14.3f  %s%s\n", op_names[row->op],
           layout, storage_name(row->dtype), shape, run_shape, impl, check, max_error, channel_error, megabytes,
           bytes_ratio, row->floor_us, row->status == ROW_NOT_RUN ? "n/a: " : "",
           row->status == ROW_NOT_RUN ? row->note : traffic);
  } else if (row->timed) {
    char spread[32], cudnn_ratio[16], unfused_ratio[16];
    snprintf(spread, sizeof spread, "%.1f-%.1f", row->p10_us, row->p90_us);
    format_ratio(row->ratio_to_cudnn, cudnn_ratio, sizeof cudnn_ratio);
    format_ratio(row->ratio_to_unfused, unfused_ratio, sizeof unfused_ratio);
    printf("%-18s %-6s %-5s %-18s %-19s %-5s %9s %9s %10.1f %19s %9.1f %8.1f %6.1f%% %9.3f " BYTES_HEADER_FORMAT
           " %9s %8s\n",
           op_names[row->op], layout, storage_name(row->dtype), shape, impl, check, max_error, channel_error,
           row->median_us, spread, row->min_us, row->gigabytes_per_second, row->percent_of_copy, row->floor_us,
           megabytes, bytes_ratio, unfused_ratio, cudnn_ratio);
  } else {
    printf("%-18s %-6s %-5s %-18s %-19s %-5s %9s %9s %10s %19s %9s %8s %7s %9.3f " BYTES_HEADER_FORMAT " %9s %8s\n",
           op_names[row->op], layout, storage_name(row->dtype), shape, impl, check, max_error, channel_error,
           row->status == ROW_NOT_RUN ? "n/a" : "not timed", "", "", "", "", row->floor_us, megabytes, bytes_ratio, "-",
           "-");
  }
  if (row->status == ROW_NOT_RUN && !env->emulation)
    printf("    n/a %s %s %s %s: %s\n", impl, op_names[row->op], layout, shape, row->note);
  if (row->status == ROW_FAIL || row->status == ROW_ERROR)
    printf("    %s %s %s %s %s: %s%s\n", check, impl, op_names[row->op], layout, shape, row->note,
           !is_bnk(row->impl) && row->status == ROW_FAIL && row->timed ? " (timed anyway: a baseline)" : "");
  fflush(stdout);
}

/* Free text in CSV: quoted, with quotes doubled. */
static void csv_text(FILE *file, const char *text) {
  fputc('"', file);
  for (const char *p = text; *p; ++p) {
    if (*p == '"') fputc('"', file);
    fputc(*p, file);
  }
  fputc('"', file);
}

/* A number, or an empty field when absent (JSON's null). */
static void csv_number(FILE *file, const char *format, double value, int present) {
  if (present && isfinite(value)) fprintf(file, format, value);
  fputc(',', file);
}

static int row_ran(const bench_row *row) { return row->status == ROW_PASS || row->status == ROW_FAIL; }

static const char *floor_basis(const bench_env *env) {
  return env->emulation ? "H100 at 3.0 TB/s (not measured)" : "copy bandwidth measured in this run";
}

void write_csv(const char *path, const bench_env *env, const bench_row *rows, int count) {
  FILE *file = fopen(path, "w");
  if (file == NULL) die("cannot open %s for writing: %s", path, strerror(errno));
  fprintf(file, "mode,device,implementation,op,layout,dtype,shape,run_shape,validated_channels,check,max_error,"
                "channel_error,median_us,min_us,p10_us,p90_us,bytes,bytes_ratio_to_unfused,gb_per_s,percent_of_copy,"
                "ratio_to_cudnn,ratio_to_unfused,floor_us,floor_bandwidth_gb_per_s,floor_basis,error\n");
  for (int i = 0; i < count; ++i) {
    const bench_row *row = &rows[i];
    char shape[64], run_shape[64];
    format_shape(&row->shape, shape, sizeof shape);
    format_shape(&row->run_shape, run_shape, sizeof run_shape);
    fprintf(file, "%s,", env->emulation ? "emulation" : "gpu");
    csv_text(file, env->device_name);
    fprintf(file, ",%s,%s,%s,%s,%s,%s,%" PRId64 ",%s,", impl_names[row->impl], op_names[row->op], row_layout_name(row),
            storage_name(row->dtype), shape, run_shape, row->validated_channels, status_names[row->status]);
    /* A NaN in the output makes the error infinite: written as "inf", which every CSV reader takes. */
    if (row_ran(row)) fprintf(file, isinf(row->check.max_error) ? "inf," : "%.3e,", row->check.max_error);
    else fputc(',', file);
    csv_number(file, "%.3e", row->check.worst_channel_error, row_ran(row) && row->check.worst_channel_error >= 0.0);
    csv_number(file, "%.3f", row->median_us, row->timed);
    csv_number(file, "%.3f", row->min_us, row->timed);
    csv_number(file, "%.3f", row->p10_us, row->timed);
    csv_number(file, "%.3f", row->p90_us, row->timed);
    fprintf(file, "%.0f,", row->bytes);
    csv_number(file, "%.4f", row->bytes_ratio_to_unfused, 1);
    csv_number(file, "%.1f", row->gigabytes_per_second, row->timed);
    csv_number(file, "%.2f", row->percent_of_copy, row->timed);
    csv_number(file, "%.4f", row->ratio_to_cudnn, row->timed);
    csv_number(file, "%.4f", row->ratio_to_unfused, row->timed);
    fprintf(file, "%.3f,%.1f,%s,", row->floor_us, env->copy_bytes_per_second / 1e9, floor_basis(env));
    csv_text(file, row->status == ROW_PASS ? "" : row->note);
    fputc('\n', file);
  }
  if (fclose(file) != 0) die("writing %s failed: %s", path, strerror(errno));
}

static void json_string(FILE *file, const char *text) {
  fputc('"', file);
  for (const char *p = text; *p; ++p) {
    if (*p == '"' || *p == '\\') fprintf(file, "\\%c", *p);
    else if ((unsigned char)*p < 0x20) fprintf(file, "\\u%04x", (unsigned)(unsigned char)*p);
    else fputc(*p, file);
  }
  fputc('"', file);
}

/* JSON has no infinity or NaN: a non-finite value, or one that is absent, is written as null. */
static void json_number(FILE *file, const char *format, double value, int present) {
  if (present && isfinite(value)) fprintf(file, format, value);
  else fprintf(file, "null");
}

void write_json(const char *path, const bench_env *env, const bench_row *rows, int count) {
  FILE *file = fopen(path, "w");
  if (file == NULL) die("cannot open %s for writing: %s", path, strerror(errno));
  const char *mode = env->emulation ? "emulation" : "gpu";
  fprintf(file, "{\n  \"bnk_version\": \"%s\",\n  \"mode\": \"%s\",\n  \"device\": ", bnk_version_string(), mode);
  json_string(file, env->device_name);
  fprintf(file, ",\n  \"cudnn\": ");
  json_string(file, env->cudnn_unavailable[0] ? env->cudnn_unavailable : env->cudnn_version);
  fprintf(file, ",\n  \"cublas\": ");
  json_string(file, env->cublas_unavailable[0] ? env->cublas_unavailable : env->cublas_version);
  fprintf(file, ",\n  \"copy_bandwidth_gb_per_s\": ");
  json_number(file, "%.1f", env->copy_bytes_per_second / 1e9, !env->emulation);
  fprintf(file, ",\n  \"floor_bandwidth_gb_per_s\": %.1f,\n  \"floor_basis\": \"%s\",\n  \"rows\": [\n",
          env->copy_bytes_per_second / 1e9, floor_basis(env));
  for (int i = 0; i < count; ++i) {
    const bench_row *row = &rows[i];
    char shape[64], run_shape[64];
    format_shape(&row->shape, shape, sizeof shape);
    format_shape(&row->run_shape, run_shape, sizeof run_shape);
    fprintf(file,
            "    {\"mode\": \"%s\", \"implementation\": \"%s\", \"op\": \"%s\", \"layout\": \"%s\", \"dtype\": \"%s\", "
            "\"shape\": \"%s\", \"run_shape\": \"%s\", \"validated_channels\": %" PRId64 ", \"check\": \"%s\", "
            "\"max_error\": ",
            mode, impl_names[row->impl], op_names[row->op], row_layout_name(row), storage_name(row->dtype), shape,
            run_shape, row->validated_channels, status_names[row->status]);
    json_number(file, "%.3e", row->check.max_error, row_ran(row));
    fprintf(file, ", \"channel_error\": ");
    json_number(file, "%.3e", row->check.worst_channel_error, row_ran(row) && row->check.worst_channel_error >= 0.0);
    const char *names[] = {"median_us", "min_us",          "p10_us",         "p90_us",
                           "gb_per_s",  "percent_of_copy", "ratio_to_cudnn", "ratio_to_unfused"};
    const double values[] = {
        row->median_us,       row->min_us,         row->p10_us,          row->p90_us, row->gigabytes_per_second,
        row->percent_of_copy, row->ratio_to_cudnn, row->ratio_to_unfused};
    for (size_t k = 0; k < sizeof values / sizeof values[0]; ++k) {
      fprintf(file, ", \"%s\": ", names[k]);
      json_number(file, "%.4f", values[k], row->timed);
    }
    fprintf(file, ", \"bytes\": %.0f, \"bytes_ratio_to_unfused\": ", row->bytes);
    json_number(file, "%.4f", row->bytes_ratio_to_unfused, 1);
    fprintf(file, ", \"floor_us\": %.3f, \"error\": ", row->floor_us);
    if (row->status == ROW_PASS) fprintf(file, "null");
    else json_string(file, row->note);
    fprintf(file, "}%s\n", i + 1 < count ? "," : "");
  }
  fprintf(file, "  ]\n}\n");
  if (fclose(file) != 0) die("writing %s failed: %s", path, strerror(errno));
}

/* The PASS / FAIL / n/a / ERROR counts of each implementation that had rows; returns the failed bnk rows, which
 * alone decide the exit status: a baseline that fails validation is a finding about the baseline. */
int print_summary(const bench_row *rows, int count) {
  int counts[IMPL_COUNT][4];
  memset(counts, 0, sizeof counts);
  for (int i = 0; i < count; ++i) ++counts[rows[i].impl][rows[i].status];
  printf("\n%-20s %6s %6s %6s %6s\n", "implementation", "PASS", "FAIL", "n/a", "ERROR");
  int bnk_failures = 0;
  for (int impl = 0; impl < IMPL_COUNT; ++impl) {
    const int *mine = counts[impl];
    if (mine[ROW_PASS] + mine[ROW_FAIL] + mine[ROW_NOT_RUN] + mine[ROW_ERROR] == 0) continue; /* no op of its ran */
    printf("%-20s %6d %6d %6d %6d\n", impl_names[impl], mine[ROW_PASS], mine[ROW_FAIL], mine[ROW_NOT_RUN],
           mine[ROW_ERROR]);
    if (is_bnk((bench_impl)impl)) bnk_failures += mine[ROW_FAIL] + mine[ROW_ERROR];
  }
  return bnk_failures;
}
