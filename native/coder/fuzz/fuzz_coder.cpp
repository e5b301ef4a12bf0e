// Fuzz target of the fedrs coder: decoding of arbitrary streams, table validation, pmf
// quantisation, and round trips of arbitrary symbols.  Any crash, sanitizer report, or broken
// invariant (abort) is a bug.
//
// With libFuzzer (clang):
//   clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -DFEDRS_LIBFUZZER
//       -Inative/coder native/coder/fuzz/fuzz_coder.cpp native/coder/rans.cpp -o fuzz_coder
//   ./fuzz_coder -runs=1000000
//
// With g++ only, the built-in driver below (random mutations of generated valid streams, guided
// by edge coverage when rans.cpp is built with -fsanitize-coverage=trace-pc):
//   g++ -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all
//       -fsanitize-coverage=trace-pc -Inative/coder -c native/coder/rans.cpp -o rans.o
//   g++ -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all
//       -Inative/coder native/coder/fuzz/fuzz_coder.cpp rans.o -o fuzz_coder -pthread
//   ./fuzz_coder -runs=1000000 -seed=1
// (tests/test_coder_sanitizers.py does exactly this for a short run.)
//
// Input layout: byte 0 selects the mode, the rest is the mode's data.
//   0  decode data[2:] as a stream, indexes derived from data[1] (tables: TableSet below)
//   1  the same after recomputing the stream's CRC, so that the payload checks are reached
//   2  build tables from the bytes; when valid, round-trip symbols taken from the bytes
//   3  quantise a pmf read from the bytes; check the invariants of the CDF
//   4  round-trip int32 symbols and table indexes read from the bytes (tables: TableSet)
// A stream that decodes must re-encode to the very same bytes (the format is canonical).  In
// modes 0 and 1 the incremental decoder (StreamDecoder, in calls of sizes derived from data[1])
// must accept exactly the streams decode() accepts, with the same symbols.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "rans.hpp"

namespace fc = fedrs::coder;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_coder: invariant broken: %s\n", what);
  std::abort();
}

std::vector<uint8_t> encode_bytes(const fc::Tables& t, const std::vector<int32_t>& symbols,
                                  const std::vector<int32_t>& indexes) {
  const fc::Encoded e = fc::encode(t, symbols.data(), indexes.data(), symbols.size(), 1);
  std::vector<uint8_t> out(e.size());
  e.write_to(out.data());
  return out;
}

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The fixed table set: Gaussian-like tables, a table with zero-frequency symbols, a table with
// only the escape symbol, tables at the ends of the int32 range.
struct TableSet {
  std::vector<int32_t> cdfs, lengths, offsets;
  int64_t width = 0;
  std::unique_ptr<fc::Tables> tables;

  TableSet() {
    std::vector<std::vector<int32_t>> rows;
    std::vector<int32_t> offs;
    for (double scale : {0.2, 1.0, 3.0, 12.0, 60.0}) {
      const int half = static_cast<int>(scale * 4) + 1;
      std::vector<float> pmf;
      for (int k = -half; k <= half; ++k) {
        const double a = (k - 0.5) / scale, b = (k + 0.5) / scale;
        pmf.push_back(static_cast<float>(0.5 * (std::erfc(-b / std::sqrt(2.0)) -
                                                std::erfc(-a / std::sqrt(2.0)))));
      }
      pmf.push_back(1e-6f);  // escape
      std::vector<int32_t> cdf(pmf.size() + 1);
      const int32_t len = static_cast<int32_t>(pmf.size());
      fc::pmf_to_quantized_cdf(pmf.data(), 1, len, &len, 16, cdf.data());
      rows.push_back(cdf);
      offs.push_back(-half);
    }
    rows.push_back({0, 30000, 30000, 30000, 65000, 65000, 65536});  // zero frequencies
    offs.push_back(-2);
    rows.push_back({0, 65536});  // escape only
    offs.push_back(7);
    rows.push_back({0, 100, 65000, 65536});
    offs.push_back(std::numeric_limits<int32_t>::max() - 1);
    rows.push_back({0, 40000, 65535, 65536});
    offs.push_back(std::numeric_limits<int32_t>::min());
    for (const auto& r : rows) width = std::max<int64_t>(width, static_cast<int64_t>(r.size()));
    for (size_t t = 0; t < rows.size(); ++t) {
      std::vector<int32_t> r = rows[t];
      lengths.push_back(static_cast<int32_t>(r.size()));
      r.resize(static_cast<size_t>(width), 0);
      cdfs.insert(cdfs.end(), r.begin(), r.end());
      offsets.push_back(offs[t]);
    }
    fc::TableArrays a;
    a.cdfs = cdfs.data();
    a.num_tables = static_cast<int64_t>(lengths.size());
    a.row_length = width;
    a.cdf_lengths = lengths.data();
    a.offsets = offsets.data();
    tables = std::make_unique<fc::Tables>(a, true, true);
  }
  int32_t num() const { return static_cast<int32_t>(lengths.size()); }
};

const TableSet& table_set() {
  static const TableSet set;
  return set;
}

std::vector<int32_t> derived_indexes(uint64_t n, uint8_t seed, int32_t num_tables) {
  std::vector<int32_t> idx(n);
  for (uint64_t i = 0; i < n; ++i)
    idx[i] = static_cast<int32_t>(mix(seed * 0x100000001ull + i / (1 + seed % 7)) % num_tables);
  return idx;
}

void check_canonical(const fc::Tables& t, const std::vector<int32_t>& decoded,
                     const std::vector<int32_t>& idx, const uint8_t* stream, size_t size) {
  const std::vector<uint8_t> again = encode_bytes(t, decoded, idx);
  if (again.size() != size || std::memcmp(again.data(), stream, size) != 0)
    fail("a decoded stream does not re-encode to itself");
}

// Decodes stream with StreamDecoder in calls of 1 ... 64 symbols; true when it succeeds, and
// then its symbols must equal `expected` (valid when whole_ok).
bool decode_in_pieces(const std::vector<uint8_t>& stream, const std::vector<int32_t>& idx,
                      uint8_t seed, const std::vector<int32_t>& expected, bool whole_ok) {
  const TableSet& ts = table_set();
  std::vector<int32_t> out(idx.size());
  try {
    fc::StreamDecoder decoder(stream.data(), stream.size());
    if (decoder.count() != idx.size()) return false;  // decode() rejects the count as well
    uint64_t done = 0;
    for (uint64_t call = 0; done < idx.size(); ++call) {
      const uint64_t n = std::min<uint64_t>(idx.size() - done, 1 + mix(seed + call) % 64);
      decoder.decode(*ts.tables, idx.data() + done, n, out.data() + done);
      done += n;
      if (decoder.position() != done) fail("incremental decoder position");
    }
    decoder.finish();
  } catch (const fc::StreamError&) {
    return false;
  }
  if (whole_ok && out != expected) fail("incremental decoding gives other symbols");
  return true;
}

void decode_mode(const uint8_t* data, size_t size, bool fix_crc) {
  if (size < 2) return;
  const uint8_t seed = data[0];
  std::vector<uint8_t> stream(data + 1, data + size);
  uint64_t n;
  try {
    n = fc::stream_symbol_count(stream.data(), stream.size());
  } catch (const fc::StreamError&) {
    n = 0;  // decode with no symbols: must fail the same way or succeed on a valid empty stream
  }
  if (n > (1u << 16)) return;  // the indexes would cost more memory than the fuzzer should use
  if (fix_crc && stream.size() >= 4) {
    const uint32_t crc = fc::crc32(stream.data(), stream.size() - 4);
    std::memcpy(stream.data() + stream.size() - 4, &crc, 4);
  }
  const TableSet& ts = table_set();
  const std::vector<int32_t> idx = derived_indexes(n, seed, ts.num());
  std::vector<int32_t> out(n);
  bool whole_ok = true;
  try {
    fc::decode(*ts.tables, stream.data(), stream.size(), idx.data(), n, out.data(), 1);
  } catch (const fc::StreamError&) {
    whole_ok = false;
  }
  const bool pieces_ok = decode_in_pieces(stream, idx, seed, out, whole_ok);
  if (pieces_ok != whole_ok) fail("incremental and whole decoding disagree on a stream");
  if (whole_ok) check_canonical(*ts.tables, out, idx, stream.data(), stream.size());
}

void tables_mode(const uint8_t* data, size_t size) {
  if (size < 4) return;
  const int64_t num = 1 + data[0] % 4;
  const int64_t width = 2 + data[1] % 40;
  size_t p = 2;
  auto next = [&]() -> uint8_t { return p < size ? data[p++] : 0; };
  std::vector<int32_t> cdfs(static_cast<size_t>(num * width)), lengths(num), offsets(num);
  for (int64_t t = 0; t < num; ++t) {
    lengths[t] = static_cast<int32_t>(next() % (width + 2));  // sometimes out of range
    const uint8_t kind = next();
    offsets[t] = kind & 1 ? static_cast<int32_t>(mix(kind) >> 32) : static_cast<int32_t>(kind) - 128;
    int32_t c = 0;
    for (int64_t k = 0; k < width; ++k) {
      const uint8_t b = next();
      if (k == 0) {
        c = (b == 255) ? 1 : 0;  // sometimes a bad start
      } else if (k == lengths[t] - 1) {
        c = (b == 254) ? 65535 : 65536;  // sometimes a bad end
      } else {
        c += (b & 0x80) ? -(b & 3) : (b & 0x7f) * (b & 0x7f);  // sometimes decreasing
      }
      cdfs[t * width + k] = c;
    }
  }
  fc::TableArrays a;
  a.cdfs = cdfs.data();
  a.num_tables = num;
  a.row_length = width;
  a.cdf_lengths = lengths.data();
  a.offsets = offsets.data();
  std::unique_ptr<fc::Tables> tables;
  try {
    tables = std::make_unique<fc::Tables>(a, true, true);
  } catch (const fc::TableError&) {
    return;
  }
  std::vector<int32_t> symbols, idx;
  while (p + 2 <= size && symbols.size() < 4096) {
    const uint8_t b0 = data[p++], b1 = data[p++];
    const int32_t t = b0 % num;
    idx.push_back(t);
    const int32_t base = offsets[t];
    symbols.push_back(b1 < 8 ? static_cast<int32_t>(mix(b1 + p) >> 32)
                             : static_cast<int32_t>(static_cast<uint32_t>(base) + (b1 % 48) - 4));
  }
  const std::vector<uint8_t> stream = encode_bytes(*tables, symbols, idx);
  std::vector<int32_t> out(symbols.size());
  fc::decode(*tables, stream.data(), stream.size(), idx.data(), idx.size(), out.data(), 1);
  if (out != symbols) fail("round trip with fuzzed tables");
}

void pmf_mode(const uint8_t* data, size_t size) {
  const int precision = 1 + (size ? data[0] % 16 : 0);
  std::vector<float> pmf;
  for (size_t p = 1; p + 4 <= size; p += 4) {
    float f;
    std::memcpy(&f, data + p, 4);
    pmf.push_back(f);
  }
  if (pmf.empty()) return;
  const int32_t m = static_cast<int32_t>(pmf.size());
  std::vector<int32_t> cdf(pmf.size() + 1);
  try {
    fc::pmf_to_quantized_cdf(pmf.data(), 1, m, &m, precision, cdf.data());
  } catch (const std::invalid_argument&) {
    return;
  }
  if (cdf[0] != 0 || cdf[m] != (1 << precision)) fail("pmf CDF endpoints");
  for (int32_t i = 0; i < m; ++i)
    if (cdf[i + 1] <= cdf[i]) fail("pmf CDF has a zero frequency");
}

void round_trip_mode(const uint8_t* data, size_t size) {
  const TableSet& ts = table_set();
  std::vector<int32_t> symbols, idx;
  for (size_t p = 0; p + 5 <= size; p += 5) {
    int32_t v;
    std::memcpy(&v, data + p + 1, 4);
    idx.push_back(data[p] % ts.num());
    // Mostly small values (inside the tables), sometimes arbitrary ones.
    symbols.push_back(data[p] & 0x80 ? v : static_cast<int8_t>(v & 0xff) / 8);
  }
  const std::vector<uint8_t> stream = encode_bytes(*ts.tables, symbols, idx);
  std::vector<int32_t> out(symbols.size());
  fc::decode(*ts.tables, stream.data(), stream.size(), idx.data(), idx.size(), out.data(), 1);
  if (out != symbols) fail("round trip of fuzzed symbols");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  switch (data[0] % 5) {
    case 0:
      decode_mode(data + 1, size - 1, false);
      break;
    case 1:
      decode_mode(data + 1, size - 1, true);
      break;
    case 2:
      tables_mode(data + 1, size - 1);
      break;
    case 3:
      pmf_mode(data + 1, size - 1);
      break;
    default:
      round_trip_mode(data + 1, size - 1);
      break;
  }
  return 0;
}

#ifndef FEDRS_LIBFUZZER
// -------------------------------------------------------------------------------------------------
// Built-in driver for toolchains without libFuzzer.

namespace {

constexpr size_t kMapSize = 1u << 16;
uint8_t g_edges[kMapSize];
uintptr_t g_prev_pc = 0;
uint64_t g_edge_count = 0;
bool g_coverage_seen = false;

}  // namespace

// Called by code built with -fsanitize-coverage=trace-pc (gcc or clang) at every basic block.
extern "C" void __sanitizer_cov_trace_pc() {
  const uintptr_t pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
  uint8_t& edge = g_edges[(pc ^ g_prev_pc) & (kMapSize - 1)];
  g_edge_count += edge == 0;
  edge = 1;
  g_prev_pc = pc >> 1;
  g_coverage_seen = true;
}

namespace {

struct Options {
  uint64_t runs = 100000;
  uint64_t seed = 1;
  double max_time = 0;  // seconds, 0 = no limit
  size_t max_len = 4096;
};

bool parse_flag(const char* arg, const char* name, std::string& value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  value = arg + n + 1;
  return true;
}

// Seed inputs: valid streams of the fixed tables (modes 0 and 1), and one input per other mode.
std::vector<std::vector<uint8_t>> seed_corpus(std::mt19937_64& rng) {
  const TableSet& ts = table_set();
  std::vector<std::vector<uint8_t>> corpus;
  for (uint64_t n : {0ull, 1ull, 2ull, 7ull, 33ull, 200ull, 1000ull, 8192ull, 16384ull}) {
    const uint8_t seed = static_cast<uint8_t>(rng());
    const std::vector<int32_t> idx = derived_indexes(n, seed, ts.num());
    std::vector<int32_t> symbols(n);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t r = rng();
      symbols[i] = (r % 50 == 0) ? static_cast<int32_t>(r >> 32)
                                 : static_cast<int32_t>(ts.offsets[idx[i]] + (r >> 40) % 12);
    }
    const std::vector<uint8_t> stream = encode_bytes(*ts.tables, symbols, idx);
    for (uint8_t mode : {0, 1}) {
      std::vector<uint8_t> input{mode, seed};
      input.insert(input.end(), stream.begin(), stream.end());
      corpus.push_back(input);
    }
  }
  for (uint8_t mode : {2, 3, 4}) {
    std::vector<uint8_t> input{mode};
    for (int i = 0; i < 64; ++i) input.push_back(static_cast<uint8_t>(rng()));
    corpus.push_back(input);
  }
  return corpus;
}

void mutate(std::vector<uint8_t>& in, const std::vector<std::vector<uint8_t>>& corpus,
            std::mt19937_64& rng, size_t max_len) {
  const int count = 1 + static_cast<int>(rng() % 4);
  for (int m = 0; m < count; ++m) {
    const size_t size = in.size();
    const uint64_t r = rng();
    switch (r % 10) {
      case 0:
      case 1:  // flip a bit (not the mode byte, most of the time)
        if (size > 1) in[1 + (r >> 8) % (size - 1)] ^= static_cast<uint8_t>(1u << ((r >> 4) % 8));
        break;
      case 2:  // set a byte
        if (size > 1) in[1 + (r >> 8) % (size - 1)] = static_cast<uint8_t>(r >> 56);
        break;
      case 3:  // truncate
        if (size > 1) in.resize(1 + (r >> 8) % size);
        break;
      case 4:  // insert a byte
        if (size < max_len) in.insert(in.begin() + 1 + (r >> 8) % size, static_cast<uint8_t>(r >> 56));
        break;
      case 5:  // erase a range
        if (size > 2) {
          const size_t at = 1 + (r >> 8) % (size - 1);
          const size_t len = 1 + (r >> 40) % std::min<size_t>(16, size - at);
          in.erase(in.begin() + at, in.begin() + at + len);
        }
        break;
      case 6:  // duplicate a range
        if (size > 2 && size < max_len) {
          const size_t at = 1 + (r >> 8) % (size - 1);
          const size_t len = 1 + (r >> 40) % std::min<size_t>(32, size - at);
          std::vector<uint8_t> part(in.begin() + at, in.begin() + at + len);
          in.insert(in.begin() + at, part.begin(), part.end());
        }
        break;
      case 7: {  // splice with another input
        const auto& other = corpus[(r >> 8) % corpus.size()];
        if (other.size() > 1 && size > 1) {
          const size_t cut = 1 + (r >> 24) % (size - 1);
          const size_t from = 1 + (r >> 40) % (other.size() - 1);
          in.resize(cut);
          in.insert(in.end(), other.begin() + from, other.end());
        }
        break;
      }
      case 8:  // add to a small header field (counts and lengths live in the first bytes)
        if (size > 4) in[2 + (r >> 8) % std::min<size_t>(12, size - 2)] += static_cast<uint8_t>(1 + (r >> 60));
        break;
      default:  // change the mode
        if (size > 0) in[0] = static_cast<uint8_t>(r >> 56);
        break;
    }
    if (in.empty()) in.push_back(0);
    if (in.size() > max_len) in.resize(max_len);
  }
}

int run_driver(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (parse_flag(argv[i], "-runs", v)) {
      opt.runs = std::strtoull(v.c_str(), nullptr, 10);
    } else if (parse_flag(argv[i], "-seed", v)) {
      opt.seed = std::strtoull(v.c_str(), nullptr, 10);
    } else if (parse_flag(argv[i], "-max_total_time", v)) {
      opt.max_time = std::strtod(v.c_str(), nullptr);
    } else if (parse_flag(argv[i], "-max_len", v)) {
      opt.max_len = std::strtoull(v.c_str(), nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: %s [-runs=N] [-seed=S] [-max_total_time=SEC] [-max_len=N]\n",
                   argv[0]);
      return 2;
    }
  }
  std::mt19937_64 rng(opt.seed);
  std::vector<std::vector<uint8_t>> corpus = seed_corpus(rng);
  for (const auto& in : corpus) LLVMFuzzerTestOneInput(in.data(), in.size());
  uint64_t edges = g_edge_count;
  const auto start = std::chrono::steady_clock::now();
  uint64_t done = 0;
  std::vector<uint8_t> in;
  for (; done < opt.runs; ++done) {
    if ((done & 1023) == 0 && opt.max_time > 0) {
      const double spent =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (spent > opt.max_time) break;
    }
    in = corpus[rng() % corpus.size()];
    mutate(in, corpus, rng, opt.max_len);
    LLVMFuzzerTestOneInput(in.data(), in.size());
    if (g_edge_count > edges) {
      edges = g_edge_count;
      if (corpus.size() < 4096) corpus.push_back(in);
    }
  }
  const double spent =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("fuzz_coder: done %llu runs in %.1f s, corpus %zu, edges %llu%s\n",
              static_cast<unsigned long long>(done), spent, corpus.size(),
              static_cast<unsigned long long>(edges),
              g_coverage_seen ? "" : " (no coverage instrumentation)");
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return run_driver(argc, argv); }
#endif
