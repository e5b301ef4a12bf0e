// Interleaved 64-bit rANS with indexed CDF tables; see rans.hpp and README.md.
//
// Coding core after F. Giesen's rans64 (public domain): states in [2^31, 2^63), 32-bit
// renormalisation words, 16-bit probabilities, division by reciprocal multiplication.
#include "rans.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fedrs coder: only little-endian targets are supported"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FEDRS_LIKELY(x) __builtin_expect(!!(x), 1)
#define FEDRS_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define FEDRS_NOINLINE __attribute__((noinline))
#define FEDRS_INLINE inline __attribute__((always_inline))
#define FEDRS_INLINE_LAMBDA __attribute__((always_inline))
#define FEDRS_NOINLINE_LAMBDA __attribute__((noinline, cold))
#else
#define FEDRS_LIKELY(x) (x)
#define FEDRS_UNLIKELY(x) (x)
#define FEDRS_NOINLINE
#define FEDRS_INLINE inline
#define FEDRS_INLINE_LAMBDA
#define FEDRS_NOINLINE_LAMBDA
#endif

namespace fedrs::coder {
namespace {

constexpr uint64_t kStateLow = 1ull << 31;   // lower bound of a lane state
constexpr uint64_t kStateHigh = 1ull << 63;  // exclusive upper bound
constexpr uint32_t kSlotMask = kTotal - 1;

// ---------------------------------------------------------------------------------------------
// Small helpers

std::string str(int64_t v) { return std::to_string(v); }

[[noreturn]] FEDRS_NOINLINE void throw_bad_index(uint64_t position, int32_t value,
                                                 int64_t num_tables) {
  throw ArgumentError("indexes[" + std::to_string(position) + "] = " + str(value) +
                      " is not a table index (there are " + str(num_tables) + " tables)");
}

[[noreturn]] FEDRS_NOINLINE void throw_stream(const std::string& what) {
  throw StreamError("corrupt or mismatched stream: " + what);
}

FEDRS_INLINE uint64_t mul_hi(uint64_t a, uint64_t b) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FEDRS_X86_ASM 1
#endif

// Decoder renormalisation without a branch (it is taken for a few percent of the symbols, at
// random): if y < 2^31 then y = refilled and ++pos.
FEDRS_INLINE void dec_refill(uint64_t& y, uint64_t refilled, uint64_t& pos) {
#ifdef FEDRS_X86_ASM
  __asm__("cmpq %[low], %[y]\n\t"
          "cmovbq %[r], %[y]\n\t"
          "adcq $0, %[pos]"
          : [y] "+r"(y), [pos] "+r"(pos)
          : [low] "r"(kStateLow), [r] "r"(refilled)
          : "cc");
#else
  const uint64_t take = y < kStateLow;
  const uint64_t mask = 0 - take;
  y = (refilled & mask) | (y & ~mask);
  pos += take;
#endif
}

// Encoder renormalisation without a branch: if x >= x_max then x >>= 32 and --slots.
FEDRS_INLINE void enc_renorm(uint64_t& x, uint64_t x_max, uint64_t& slots) {
#ifdef FEDRS_X86_ASM
  const uint64_t high = x >> 32;
  __asm__("cmpq %[max], %[x]\n\t"
          "cmovaeq %[h], %[x]\n\t"
          "adcq $-1, %[n]"
          : [x] "+r"(x), [n] "+r"(slots)
          : [max] "r"(x_max), [h] "r"(high)
          : "cc");
#else
  const uint64_t emit = x >= x_max;
  x >>= emit << 5;
  slots -= emit;
#endif
}

FEDRS_INLINE uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Decoder renormalisation with a bounds check: state = y, refilled from word `pos` (then ++pos)
// if y < 2^31.
FEDRS_INLINE void refill_checked(uint64_t y, uint64_t& state, const uint8_t* word_bytes,
                                 uint64_t num_words, uint64_t& pos) {
  if (y < kStateLow) {
    if (pos >= num_words) throw_stream("rANS data ends early");
    state = (y << 32) | load_u32(word_bytes + 4 * pos);
    ++pos;
  } else {
    state = y;
  }
}

int ceil_log2(uint64_t v) {
  int bits = 0;
  while ((1ull << bits) < v) ++bits;
  return bits;
}

// Encoder entry of a symbol with the given start and frequency (Rans64EncSymbolInit).
EncEntry make_entry(uint32_t start, uint32_t freq) {
  EncEntry e{};
  e.cmpl = static_cast<uint16_t>(kTotal - freq);
  if (freq < 2) {
    e.rcp = ~0ull;
    e.shift = 0;
    e.bias = start + kTotal - 1;
  } else {
    uint32_t shift = 0;
    while (freq > (1u << shift)) ++shift;
    uint64_t x0 = freq - 1;
    const uint64_t x1 = 1ull << (shift + 31);
    const uint64_t t1 = x1 / freq;
    x0 += (x1 % freq) << 32;
    const uint64_t t0 = x0 / freq;
    e.rcp = t0 + (t1 << 32);
    e.shift = static_cast<uint8_t>(shift - 1);
    e.bias = start;
  }
  return e;
}

// ---------------------------------------------------------------------------------------------
// Varints (LEB128, canonical)

void put_varint(std::vector<uint8_t>& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<uint8_t>(v));
}

uint64_t get_varint(const uint8_t* data, size_t size, size_t& pos, const char* what) {
  uint64_t v = 0;
  for (int i = 0; i < 10; ++i) {
    if (pos >= size) throw_stream(std::string("header ends inside ") + what);
    const uint8_t b = data[pos++];
    if (i == 9 && b > 1) throw_stream(std::string("header field ") + what + " overflows");
    v |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
    if ((b & 0x80) == 0) {
      if (b == 0 && i > 0) throw_stream(std::string("header field ") + what + " not canonical");
      return v;
    }
  }
  throw_stream(std::string("header field ") + what + " too long");
}

// ---------------------------------------------------------------------------------------------
// Escape bit stream: LSB-first bits.  An escaped value v (relative to the table's offset) is
// written as a 4-bit count c and c nibbles of raw = 2 (v - n) for v >= n, raw = -2 v - 1 for
// v < 0 (c = 0 for raw = 0, otherwise the fewest nibbles); c = 15 announces a regular symbol of
// zero frequency followed by its 16-bit value.

constexpr uint32_t kEscInTable = 15;
constexpr uint32_t kEscMaxNibbles = 9;

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>& out) : out_(out) {}
  void put(uint64_t value, int bits) {  // bits <= 36
    acc_ |= value << count_;
    count_ += bits;
    while (count_ >= 8) {
      out_.push_back(static_cast<uint8_t>(acc_));
      acc_ >>= 8;
      count_ -= 8;
    }
  }
  void finish() {
    if (count_ > 0) out_.push_back(static_cast<uint8_t>(acc_));
    acc_ = 0;
    count_ = 0;
  }

 private:
  std::vector<uint8_t>& out_;
  uint64_t acc_ = 0;
  int count_ = 0;
};

class BitReader {
 public:
  BitReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint64_t get(int bits) {  // bits <= 36
    while (count_ < bits) {
      if (pos_ >= size_) throw_stream("escape data ends early");
      acc_ |= static_cast<uint64_t>(data_[pos_++]) << count_;
      count_ += 8;
    }
    const uint64_t v = acc_ & ((1ull << bits) - 1);
    acc_ >>= bits;
    count_ -= bits;
    return v;
  }
  void finish() const {
    if (pos_ != size_) throw_stream("unused escape data");
    if (acc_ != 0) throw_stream("non-zero escape padding");
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  uint64_t acc_ = 0;
  int count_ = 0;
};

struct Escape {
  uint64_t index;  // position in the chunk
  int64_t value;   // symbol - offset
  uint32_t n;      // regular symbols of the table
  bool in_table;   // a regular symbol of zero frequency
};

void write_escape(BitWriter& bw, const Escape& e) {
  if (e.in_table) {
    bw.put(kEscInTable, 4);
    bw.put(static_cast<uint64_t>(e.value), 16);
    return;
  }
  const uint64_t raw = e.value >= 0 ? 2 * static_cast<uint64_t>(e.value - e.n)
                                    : 2 * static_cast<uint64_t>(-e.value) - 1;
  uint32_t nibbles = 0;
  while ((raw >> (4 * nibbles)) != 0) ++nibbles;
  bw.put(nibbles, 4);
  bw.put(raw, static_cast<int>(4 * nibbles));
}

// Reads the escape of one symbol of table d; returns the symbol.
FEDRS_NOINLINE int32_t read_escape(BitReader& br, const DecTable& d) {
  const uint64_t n = d.n;
  const uint32_t nibbles = static_cast<uint32_t>(br.get(4));
  int64_t value;
  if (nibbles == kEscInTable) {
    const uint64_t v = br.get(16);
    if (v >= n || d.cdf[v + 1] != d.cdf[v]) throw_stream("escape of a coded symbol");
    value = static_cast<int64_t>(v);
  } else {
    if (nibbles > kEscMaxNibbles) throw_stream("bad escape length");
    const uint64_t raw = br.get(static_cast<int>(4 * nibbles));
    if (nibbles > 0 && (raw >> (4 * nibbles - 4)) == 0) throw_stream("escape not canonical");
    value = (raw & 1) ? -static_cast<int64_t>((raw + 1) / 2)
                      : static_cast<int64_t>(n) + static_cast<int64_t>(raw / 2);
  }
  const int64_t symbol = static_cast<int64_t>(d.offset) + value;
  if (symbol < std::numeric_limits<int32_t>::min() || symbol > std::numeric_limits<int32_t>::max())
    throw_stream("escaped symbol outside int32");
  return static_cast<int32_t>(symbol);
}

// ---------------------------------------------------------------------------------------------
// Chunks and threads

struct ChunkRange {
  uint64_t begin, end;
};

ChunkRange chunk_range(uint64_t n, uint64_t chunks, uint64_t c) {
  return {c * n / chunks, (c + 1) * n / chunks};  // n < 2^40, chunks < 2^20: no overflow
}

// Runs f(0) ... f(n - 1) on up to `threads` threads; rethrows the first (lowest) failure.
template <class F>
void parallel_for(uint64_t n, int threads, F&& f) {
  const uint64_t workers = std::min<uint64_t>(n, threads < 1 ? 1 : static_cast<uint64_t>(threads));
  if (workers <= 1) {
    for (uint64_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::vector<std::exception_ptr> errors(n);
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  auto work = [&]() {
    for (;;) {
      const uint64_t i = next.fetch_add(1);
      if (i >= n || failed.load()) return;
      try {
        f(i);
      } catch (...) {
        errors[i] = std::current_exception();
        failed.store(true);
      }
    }
  };
  std::vector<std::thread> pool;
  try {
    for (uint64_t w = 1; w < workers; ++w) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // No more threads available: the threads started so far and this one do the work.
  }
  work();
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// ---------------------------------------------------------------------------------------------
// Encoder

FEDRS_INLINE uint64_t enc_put(uint64_t x, const EncEntry& e, uint32_t* buf, uint64_t& top) {
  buf[top - 1] = static_cast<uint32_t>(x);  // kept only when emitted (there is a spare word)
  enc_renorm(x, static_cast<uint64_t>(kTotal - e.cmpl) << 47, top);
  const uint64_t q = mul_hi(x, e.rcp) >> e.shift;
  return x + e.bias + q * e.cmpl;
}

// The entry that codes symbol value v (relative to the offset) of table et: its own, or the
// escape entry when v is outside the table.  A zero-frequency symbol's entry holds the escape's
// coding data (see Tables), so the entry always codes correctly; its escape flag says whether
// the value must also go to the escape bits.
FEDRS_INLINE const EncEntry& enc_entry(const EncTable& et, int64_t v) {
  const bool in_range = static_cast<uint64_t>(v) < et.n;
  return et.entries[in_range ? static_cast<uint64_t>(v) : et.n];
}

template <int K>
void encode_chunk(const Tables& tables, const int32_t* symbols, const int32_t* indexes, uint64_t n,
                  uint64_t first, std::unique_ptr<uint32_t[]>& buffer, const uint32_t*& words,
                  uint64_t& num_words, std::vector<uint8_t>& escape_bytes) {
  const uint64_t capacity = n + 2 * K + 1;
  buffer.reset(new uint32_t[capacity]);
  uint32_t* const buf = buffer.get();
  uint64_t top = capacity;  // words at buf[top, capacity) are written
  uint64_t x[K];
  for (int j = 0; j < K; ++j) x[j] = kStateLow;
  std::vector<Escape> escapes;  // in reverse order of the symbols
  const EncTable* const enc = tables.enc();
  const uint64_t num_tables = static_cast<uint64_t>(tables.num_tables());

  auto bad_index = [&](uint64_t i) FEDRS_NOINLINE_LAMBDA {
    throw_bad_index(first + i, indexes[i], tables.num_tables());
  };
  auto table = [&](uint64_t i) FEDRS_INLINE_LAMBDA -> const EncTable& {
    const uint64_t t = static_cast<uint32_t>(indexes[i]);
    if (FEDRS_UNLIKELY(t >= num_tables)) bad_index(i);
    return enc[t];
  };
  auto record = [&](uint64_t i) {
    const EncTable& et = table(i);
    const int64_t v = static_cast<int64_t>(symbols[i]) - et.offset;
    if (enc_entry(et, v).escape)
      escapes.push_back(Escape{i, v, et.n, static_cast<uint64_t>(v) < et.n});
  };

  // rANS codes backwards: the last n % K symbols one by one, then blocks of K, lane j taking
  // the symbols i with i % K == j.
  const uint64_t full = n / K * K;
  for (uint64_t i = n; i > full;) {
    --i;
    const EncTable& et = table(i);
    const int64_t v = static_cast<int64_t>(symbols[i]) - et.offset;
    const EncEntry& e = enc_entry(et, v);
    if (FEDRS_UNLIKELY(e.escape)) record(i);
    x[i % K] = enc_put(x[i % K], e, buf, top);
  }
  for (uint64_t i = full; i > 0;) {
    i -= K;
    const int32_t* const sp = symbols + i;
    const int32_t* const ip = indexes + i;
    uint32_t any_escape = 0;
#pragma GCC unroll 16
    for (int j = K - 1; j >= 0; --j) {
      const uint64_t t = static_cast<uint32_t>(ip[j]);
      if (FEDRS_UNLIKELY(t >= num_tables)) bad_index(i + static_cast<uint64_t>(j));
      const EncTable& et = enc[t];
      const int64_t v = static_cast<int64_t>(sp[j]) - et.offset;
      const EncEntry& e = enc_entry(et, v);
      any_escape |= e.escape;
      x[j] = enc_put(x[j], e, buf, top);
    }
    if (FEDRS_UNLIKELY(any_escape)) {
      for (int j = K - 1; j >= 0; --j) record(i + static_cast<uint64_t>(j));
    }
  }
  top -= 2 * K;
  for (int j = 0; j < K; ++j) {
    buf[top + 2 * j] = static_cast<uint32_t>(x[j]);
    buf[top + 2 * j + 1] = static_cast<uint32_t>(x[j] >> 32);
  }
  words = buf + top;
  num_words = capacity - top;

  BitWriter bw(escape_bytes);
  for (auto it = escapes.rbegin(); it != escapes.rend(); ++it) write_escape(bw, *it);
  bw.finish();
}

// ---------------------------------------------------------------------------------------------
// Decoder

// The symbol whose interval holds slot, at or after sym (cdf[n + 1] = kTotal > slot ends it).
FEDRS_NOINLINE uint64_t scan_forward(const uint32_t* cdf, uint64_t sym, uint64_t slot) {
  while (cdf[sym + 1] <= slot) ++sym;
  return sym;
}

template <int K>
void decode_chunk(const Tables& tables, const uint8_t* word_bytes, uint64_t num_words,
                  const uint8_t* escape_bytes, uint64_t num_escape_bytes, const int32_t* indexes,
                  uint64_t n, uint64_t first, int32_t* out) {
  if (num_words < 2 * K) throw_stream("chunk shorter than its states");
  uint64_t x[K];
  for (int j = 0; j < K; ++j) {
    x[j] = load_u32(word_bytes + 8 * j) |
           (static_cast<uint64_t>(load_u32(word_bytes + 8 * j + 4)) << 32);
    if (x[j] < kStateLow || x[j] >= kStateHigh) throw_stream("bad initial state");
  }
  uint64_t pos = 2 * K;
  BitReader escapes(escape_bytes, num_escape_bytes);
  const DecTable* dec = tables.dec();
  const uint64_t num_tables = static_cast<uint64_t>(tables.num_tables());

  auto bad_index = [&](uint64_t i) FEDRS_NOINLINE_LAMBDA {
    throw_bad_index(first + i, indexes[i], tables.num_tables());
  };

  // One symbol; kChecked reads renormalisation words with a bounds check.
  auto step = [&](uint64_t i, uint64_t& state, auto checked) FEDRS_INLINE_LAMBDA {
    constexpr bool kChecked = decltype(checked)::value;
    const uint64_t t = static_cast<uint32_t>(indexes[i]);
    if (FEDRS_UNLIKELY(t >= num_tables)) bad_index(i);
    const DecTable& d = dec[t];
    const uint64_t slot = state & kSlotMask;
    // The bucket gives the symbol at the bucket's first slot; later symbols of the bucket are
    // found by a short forward scan (cdf[n + 1] = kTotal > slot ends it).
    uint64_t sym = d.buckets[slot >> d.shift];
    uint64_t hi = d.cdf[sym + 1];
    if (FEDRS_UNLIKELY(hi <= slot)) {
      sym = scan_forward(d.cdf, sym, slot);
      hi = d.cdf[sym + 1];
    }
    const uint64_t lo = d.cdf[sym];
    const uint64_t y = (hi - lo) * (state >> kPrecisionBits) + (slot - lo);
    if constexpr (kChecked) {
      refill_checked(y, state, word_bytes, num_words, pos);
    } else {
      // The refill happens for a few percent of the symbols, unpredictably: select, not branch.
      uint64_t next = y;
      dec_refill(next, (y << 32) | load_u32(word_bytes + 4 * pos), pos);
      state = next;
    }
    if (FEDRS_UNLIKELY(sym == d.n)) {
      out[i] = read_escape(escapes, d);
    } else {
      out[i] = d.offset + static_cast<int32_t>(sym);
    }
  };

  const uint64_t full = n / K * K;
  uint64_t i = 0;
  while (i < full) {
    // Blocks of K symbols read at most K words: no bounds checks while K words remain per block.
    const uint64_t blocks = std::min((full - i) / K, (num_words - pos) / K);
    if (blocks == 0) break;
    const uint64_t stop = i + blocks * K;
    for (; i < stop; i += K) {
#pragma GCC unroll 16
      for (int j = 0; j < K; ++j) step(i + j, x[j], std::false_type{});
    }
  }
  for (; i < n; ++i) step(i, x[i % K], std::true_type{});

  if (pos != num_words) throw_stream("unused rANS data");
  for (int j = 0; j < K; ++j)
    if (x[j] != kStateLow) throw_stream("final state mismatch (wrong tables or indexes?)");
  escapes.finish();
}

// One symbol of table d with lane state `state`, reading renormalisation words with a bounds
// check (the incremental decoder; decode_chunk inlines the same step).
int32_t decode_symbol(const DecTable& d, uint64_t& state, const uint8_t* word_bytes,
                      uint64_t num_words, uint64_t& pos, BitReader& escapes) {
  const uint64_t slot = state & kSlotMask;
  uint64_t sym = d.buckets[slot >> d.shift];
  if (d.cdf[sym + 1] <= slot) sym = scan_forward(d.cdf, sym, slot);
  const uint64_t lo = d.cdf[sym];
  const uint64_t hi = d.cdf[sym + 1];
  const uint64_t y = (hi - lo) * (state >> kPrecisionBits) + (slot - lo);
  refill_checked(y, state, word_bytes, num_words, pos);
  return sym == d.n ? read_escape(escapes, d) : d.offset + static_cast<int32_t>(sym);
}

// ---------------------------------------------------------------------------------------------
// Header

struct ChunkInfo {
  uint64_t num_words;
  uint64_t num_escape_bytes;
  uint64_t word_offset;    // byte offset of the chunk's words in the stream
  uint64_t escape_offset;  // byte offset of its escape bytes
};

struct Header {
  uint64_t count;
  std::vector<ChunkInfo> chunks;
};

uint64_t parse_count(const uint8_t* data, size_t size, size_t& pos) {
  if (size < 8) throw_stream("stream of " + std::to_string(size) + " bytes is too short");
  if (data[0] != kMagic0 || data[1] != kMagic1) throw_stream("bad magic (not a fedrs stream)");
  if (data[2] != kVersion)
    throw_stream("unsupported format version " + std::to_string(static_cast<int>(data[2])));
  pos = 3;
  const uint64_t count = get_varint(data, size, pos, "symbol count");
  if (count > kMaxSymbols) throw_stream("symbol count too large");
  return count;
}

// expected_count kAnyCount accepts the count the stream declares.
constexpr uint64_t kAnyCount = ~0ull;

Header parse_header(const uint8_t* data, size_t size, uint64_t expected_count) {
  size_t pos = 0;
  Header h;
  h.count = parse_count(data, size, pos);
  if (expected_count != kAnyCount && h.count != expected_count)
    throw StreamError("stream holds " + std::to_string(h.count) + " symbols but indexes has " +
                      std::to_string(expected_count));
  const uint64_t chunks = chunk_count(h.count);
  h.chunks.resize(chunks);
  for (auto& c : h.chunks) {
    c.num_words = get_varint(data, size, pos, "chunk length");
    c.num_escape_bytes = get_varint(data, size, pos, "escape length");
    if (c.num_words > size || c.num_escape_bytes > size) throw_stream("chunk longer than stream");
  }
  // Every byte is accounted for: header, chunks, CRC.
  uint64_t offset = pos;
  for (auto& c : h.chunks) {
    c.word_offset = offset;
    offset += 4 * c.num_words;
    c.escape_offset = offset;
    offset += c.num_escape_bytes;
    if (offset > size) throw_stream("truncated (declared chunks exceed the stream)");
  }
  if (offset + 4 != size) {
    throw_stream(offset + 4 > size ? "truncated" : "trailing bytes after the declared payload");
  }
  const uint32_t stored = load_u32(data + size - 4);
  if (crc32(data, size - 4) != stored) throw_stream("CRC mismatch");
  return h;
}

// ---------------------------------------------------------------------------------------------
// CRC-32 (zlib polynomial), slicing by 8

struct CrcTables {
  uint32_t t[8][256];
};

constexpr CrcTables make_crc_tables() {
  CrcTables c{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t v = i;
    for (int k = 0; k < 8; ++k) v = (v & 1) ? (v >> 1) ^ 0xEDB88320u : v >> 1;
    c.t[0][i] = v;
  }
  for (uint32_t i = 0; i < 256; ++i)
    for (int k = 1; k < 8; ++k) c.t[k][i] = (c.t[k - 1][i] >> 8) ^ c.t[0][c.t[k - 1][i] & 0xff];
  return c;
}

constexpr CrcTables kCrc = make_crc_tables();

// ---------------------------------------------------------------------------------------------
// pmf -> quantised CDF (one row)

void quantize_row(const float* pmf, int64_t m, int precision, int64_t row, int32_t* out) {
  const uint64_t total_mass = 1ull << precision;
  if (m < 1) throw std::invalid_argument("pmf row " + str(row) + " is empty");
  if (static_cast<uint64_t>(m) > total_mass)
    throw std::invalid_argument("pmf row " + str(row) + " has " + str(m) +
                                " symbols, more than 2**precision");
  std::vector<uint64_t> freq(static_cast<size_t>(m));
  uint64_t total = 0;
  const float scale = static_cast<float>(1u << precision);
  for (int64_t i = 0; i < m; ++i) {
    const float p = pmf[i];
    if (!(p >= 0.0f) || !std::isfinite(p))
      throw std::invalid_argument("pmf[" + str(row) + ", " + str(i) + "] = " +
                                  std::to_string(p) + " is negative or not finite");
    const float r = std::round(p * scale);
    if (r > 4294967295.0f)
      throw std::invalid_argument("pmf[" + str(row) + ", " + str(i) + "] is too large");
    freq[i] = static_cast<uint64_t>(r);
    total += freq[i];
  }
  if (total == 0)
    throw std::invalid_argument("pmf row " + str(row) + " has no non-zero probability");
  uint64_t sum = 0;
  for (int64_t i = 0; i < m; ++i) {
    freq[i] = (total_mass * freq[i]) / total;
    sum += freq[i];
  }
  freq[m - 1] += total_mass - sum;  // the closing entry is forced to 2**precision
  // Every zero frequency takes one unit from the smallest frequency above one (first on ties),
  // in order of the zero symbols: CompressAI's stealing loop, in O(m log m).
  bool any_zero = false;
  for (int64_t i = 0; i < m; ++i) any_zero |= freq[i] == 0;
  if (any_zero) {
    std::set<std::pair<uint64_t, int64_t>> donors;
    for (int64_t i = 0; i < m; ++i)
      if (freq[i] > 1) donors.emplace(freq[i], i);
    for (int64_t i = 0; i < m; ++i) {
      if (freq[i] != 0) continue;
      auto it = donors.begin();  // not empty: m <= 2**precision
      const auto [f, j] = *it;
      donors.erase(it);
      freq[j] = f - 1;
      if (freq[j] > 1) donors.emplace(freq[j], j);
      freq[i] = 1;
    }
  }
  uint64_t c = 0;
  out[0] = 0;
  for (int64_t i = 0; i < m; ++i) {
    c += freq[i];
    out[i + 1] = static_cast<int32_t>(c);
  }
}

}  // namespace

// -------------------------------------------------------------------------------------------------
// Public functions

uint64_t chunk_count(uint64_t n) {
  if (n == 0) return 0;
  return std::max<uint64_t>(1, n >> kChunkShift);
}

int lane_count(uint64_t m) {
  if (m >= (1u << 15)) return 8;
  if (m >= (1u << 14)) return 4;
  if (m >= (1u << 13)) return 2;
  return 1;
}

uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc) {
  crc = ~crc;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= crc;
    crc = kCrc.t[7][w & 0xff] ^ kCrc.t[6][(w >> 8) & 0xff] ^ kCrc.t[5][(w >> 16) & 0xff] ^
          kCrc.t[4][(w >> 24) & 0xff] ^ kCrc.t[3][(w >> 32) & 0xff] ^
          kCrc.t[2][(w >> 40) & 0xff] ^ kCrc.t[1][(w >> 48) & 0xff] ^ kCrc.t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = kCrc.t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

Tables::Tables(const TableArrays& a, bool for_encoding, bool for_decoding) {
  if (a.num_tables < 0 || a.row_length < 0) throw TableError("cdfs has a negative dimension");
  if (a.num_tables > std::numeric_limits<int32_t>::max())
    throw TableError("too many tables (" + str(a.num_tables) + ")");
  num_tables_ = a.num_tables;
  const int64_t max_length = std::min(a.row_length, kMaxCdfLength);
  // Validate and count.
  uint64_t total_symbols = 0;
  uint64_t total_buckets = 0;
  std::vector<int> bucket_bits(static_cast<size_t>(num_tables_));
  for (int64_t t = 0; t < num_tables_; ++t) {
    const int64_t len = a.cdf_lengths[t];
    const std::string name = "table " + str(t) + ": ";
    if (len < 2 || len > max_length)
      throw TableError(name + "cdf_lengths[" + str(t) + "] = " + str(len) +
                       " outside [2, " + str(max_length) + "]");
    const int32_t* row = a.cdfs + t * a.row_length;
    if (row[0] != 0) throw TableError(name + "CDF does not start at 0");
    if (row[len - 1] != static_cast<int32_t>(kTotal))
      throw TableError(name + "CDF does not end at 65536 (16-bit precision)");
    for (int64_t k = 1; k < len; ++k) {
      if (row[k] < row[k - 1])
        throw TableError(name + "CDF decreases at entry " + str(k));
    }
    if (row[len - 1] == row[len - 2])
      throw TableError(name + "the escape symbol (last interval) has zero frequency");
    const int64_t n = len - 2;
    if (n > 0 && static_cast<int64_t>(a.offsets[t]) + n - 1 > std::numeric_limits<int32_t>::max())
      throw TableError(name + "offset + symbols exceed int32");
    total_symbols += static_cast<uint64_t>(n) + 1;
    const int bits = std::min(kPrecisionBits, std::max(2, ceil_log2(static_cast<uint64_t>(n) + 1) + 2));
    bucket_bits[t] = bits;
    total_buckets += 1ull << bits;
  }
  // Prepare.
  if (for_encoding) {
    enc_entries_.resize(total_symbols);
    enc_.resize(static_cast<size_t>(num_tables_));
    EncEntry* e = enc_entries_.data();
    for (int64_t t = 0; t < num_tables_; ++t) {
      const int32_t* row = a.cdfs + t * a.row_length;
      const uint32_t n = static_cast<uint32_t>(a.cdf_lengths[t] - 2);
      enc_[t] = EncTable{e, n, a.offsets[t]};
      EncEntry escape = make_entry(static_cast<uint32_t>(row[n]), kTotal - static_cast<uint32_t>(row[n]));
      escape.escape = 1;
      for (uint32_t s = 0; s < n; ++s) {
        const uint32_t freq = static_cast<uint32_t>(row[s + 1] - row[s]);
        if (freq == 0) {
          *e = escape;  // coded as the escape symbol, the value goes to the escape bits
        } else {
          *e = make_entry(static_cast<uint32_t>(row[s]), freq);
        }
        ++e;
      }
      *e++ = escape;
    }
  }
  if (for_decoding) {
    cdf_values_.resize(total_symbols + static_cast<uint64_t>(num_tables_));
    buckets_.resize(total_buckets);
    dec_.resize(static_cast<size_t>(num_tables_));
    uint32_t* c = cdf_values_.data();
    uint16_t* b = buckets_.data();
    for (int64_t t = 0; t < num_tables_; ++t) {
      const int32_t* row = a.cdfs + t * a.row_length;
      const uint32_t n = static_cast<uint32_t>(a.cdf_lengths[t] - 2);
      for (uint32_t s = 0; s <= n + 1; ++s) c[s] = static_cast<uint32_t>(row[s]);
      const int bits = bucket_bits[t];
      const uint32_t shift = static_cast<uint32_t>(kPrecisionBits - bits);
      uint32_t s = 0;
      for (uint32_t k = 0; k < (1u << bits); ++k) {
        const uint32_t slot = k << shift;
        while (c[s + 1] <= slot) ++s;
        b[k] = static_cast<uint16_t>(s);
      }
      dec_[t] = DecTable{c, b, shift, n, a.offsets[t]};
      c += n + 2;
      b += 1u << bits;
    }
  }
}

size_t Encoded::size() const {
  size_t total = header_.size() + 4;
  for (const auto& c : chunks_) total += 4 * c.num_words + c.escapes.size();
  return total;
}

void Encoded::write_to(uint8_t* out) const {
  uint8_t* p = out;
  std::memcpy(p, header_.data(), header_.size());
  p += header_.size();
  for (const auto& c : chunks_) {
    if (c.num_words) std::memcpy(p, c.words, 4 * c.num_words);
    p += 4 * c.num_words;
    if (!c.escapes.empty()) std::memcpy(p, c.escapes.data(), c.escapes.size());
    p += c.escapes.size();
  }
  const uint32_t crc = crc32(out, static_cast<size_t>(p - out));
  std::memcpy(p, &crc, 4);
}

Encoded encode(const Tables& tables, const int32_t* symbols, const int32_t* indexes,
               uint64_t count, int threads) {
  if (!tables.can_encode()) throw ArgumentError("tables were not prepared for encoding");
  if (count > kMaxSymbols) throw ArgumentError("too many symbols");
  Encoded result;
  const uint64_t chunks = chunk_count(count);
  result.chunks_.resize(chunks);
  parallel_for(chunks, threads, [&](uint64_t c) {
    const ChunkRange r = chunk_range(count, chunks, c);
    auto& ch = result.chunks_[c];
    const uint64_t m = r.end - r.begin;
    switch (lane_count(m)) {
#define FEDRS_ENCODE_LANES(K)                                                                   \
  case K:                                                                                       \
    encode_chunk<K>(tables, symbols + r.begin, indexes + r.begin, m, r.begin, ch.buffer,        \
                    ch.words, ch.num_words, ch.escapes);                                        \
    break;
      FEDRS_ENCODE_LANES(1)
      FEDRS_ENCODE_LANES(2)
      FEDRS_ENCODE_LANES(4)
      FEDRS_ENCODE_LANES(8)
#undef FEDRS_ENCODE_LANES
      default:
        throw std::logic_error("bad lane count");
    }
  });
  auto& h = result.header_;
  h = {kMagic0, kMagic1, kVersion};
  put_varint(h, count);
  for (const auto& c : result.chunks_) {
    put_varint(h, c.num_words);
    put_varint(h, c.escapes.size());
  }
  return result;
}

uint64_t stream_symbol_count(const uint8_t* data, size_t size) {
  size_t pos = 0;
  return parse_count(data, size, pos);
}

void decode(const Tables& tables, const uint8_t* data, size_t size, const int32_t* indexes,
            uint64_t count, int32_t* out, int threads) {
  if (!tables.can_decode()) throw ArgumentError("tables were not prepared for decoding");
  const Header h = parse_header(data, size, count);
  const uint64_t chunks = h.chunks.size();
  parallel_for(chunks, threads, [&](uint64_t c) {
    const ChunkRange r = chunk_range(count, chunks, c);
    const ChunkInfo& info = h.chunks[c];
    const uint64_t m = r.end - r.begin;
    switch (lane_count(m)) {
#define FEDRS_DECODE_LANES(K)                                                                   \
  case K:                                                                                       \
    decode_chunk<K>(tables, data + info.word_offset, info.num_words, data + info.escape_offset, \
                    info.num_escape_bytes, indexes + r.begin, m, r.begin, out + r.begin);       \
    break;
      FEDRS_DECODE_LANES(1)
      FEDRS_DECODE_LANES(2)
      FEDRS_DECODE_LANES(4)
      FEDRS_DECODE_LANES(8)
#undef FEDRS_DECODE_LANES
      default:
        throw std::logic_error("bad lane count");
    }
  });
}

// -------------------------------------------------------------------------------------------------
// Incremental decoder

struct StreamDecoder::State {
  std::vector<uint8_t> data;
  Header header;
  uint64_t position = 0;  // symbols decoded
  bool failed = false;
  // The chunk being decoded (open) or the next one.
  uint64_t chunk = 0;
  bool open = false;
  uint64_t chunk_end = 0;  // first symbol after the open chunk
  uint64_t lanes = 1;
  uint64_t lane = 0;  // lane of the next symbol
  uint64_t x[8] = {};
  const uint8_t* words = nullptr;
  uint64_t num_words = 0;
  uint64_t pos = 0;  // words of the chunk read
  BitReader escapes{nullptr, 0};
  mutable std::mutex mutex;

  void open_chunk() {
    const uint64_t chunks = header.chunks.size();
    const ChunkRange r = chunk_range(header.count, chunks, chunk);
    const ChunkInfo& info = header.chunks[chunk];
    lanes = static_cast<uint64_t>(lane_count(r.end - r.begin));
    if (info.num_words < 2 * lanes) throw_stream("chunk shorter than its states");
    words = data.data() + info.word_offset;
    num_words = info.num_words;
    for (uint64_t j = 0; j < lanes; ++j) {
      x[j] = load_u32(words + 8 * j) | (static_cast<uint64_t>(load_u32(words + 8 * j + 4)) << 32);
      if (x[j] < kStateLow || x[j] >= kStateHigh) throw_stream("bad initial state");
    }
    pos = 2 * lanes;
    lane = 0;
    escapes = BitReader(data.data() + info.escape_offset, info.num_escape_bytes);
    chunk_end = r.end;
    open = true;
  }

  void close_chunk() {
    if (pos != num_words) throw_stream("unused rANS data");
    for (uint64_t j = 0; j < lanes; ++j)
      if (x[j] != kStateLow) throw_stream("final state mismatch (wrong tables or indexes?)");
    escapes.finish();
    open = false;
    ++chunk;
  }
};

StreamDecoder::StreamDecoder(const uint8_t* data, size_t size) : state_(new State) {
  State& s = *state_;
  s.data.assign(data, data + size);
  s.header = parse_header(s.data.data(), s.data.size(), kAnyCount);
}

StreamDecoder::~StreamDecoder() = default;

uint64_t StreamDecoder::count() const { return state_->header.count; }

uint64_t StreamDecoder::position() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->position;
}

void StreamDecoder::decode(const Tables& tables, const int32_t* indexes, uint64_t n,
                           int32_t* out) {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!tables.can_decode()) throw ArgumentError("tables were not prepared for decoding");
  if (s.failed) throw_stream("an earlier call failed");
  const uint64_t num_tables = static_cast<uint64_t>(tables.num_tables());
  for (uint64_t i = 0; i < n; ++i)
    if (static_cast<uint64_t>(static_cast<uint32_t>(indexes[i])) >= num_tables)
      throw_bad_index(i, indexes[i], tables.num_tables());
  const uint64_t remaining = s.header.count - s.position;
  if (n > remaining)
    throw StreamError("asked for " + std::to_string(n) + " symbols but the stream holds " +
                      std::to_string(remaining) + " more");
  const DecTable* dec = tables.dec();
  try {
    for (uint64_t i = 0; i < n; ++i) {
      if (!s.open) s.open_chunk();
      const DecTable& d = dec[static_cast<uint32_t>(indexes[i])];
      out[i] = decode_symbol(d, s.x[s.lane], s.words, s.num_words, s.pos, s.escapes);
      if (++s.lane == s.lanes) s.lane = 0;
      if (++s.position == s.chunk_end) s.close_chunk();
    }
  } catch (...) {
    s.failed = true;
    throw;
  }
}

void StreamDecoder::finish() const {
  const State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.failed) throw_stream("an earlier call failed");
  if (s.position != s.header.count)
    throw StreamError("stream holds " + std::to_string(s.header.count) + " symbols, " +
                      std::to_string(s.position) + " decoded");
}

void pmf_to_quantized_cdf(const float* pmfs, int64_t rows, int64_t row_length,
                          const int32_t* lengths, int precision, int32_t* out) {
  if (precision < 1 || precision > kPrecisionBits)
    throw std::invalid_argument("precision must be in [1, 16], got " + str(precision));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t m = lengths[r];
    if (m < 1 || m > row_length)
      throw std::invalid_argument("pmf length " + str(m) + " of row " + str(r) +
                                  " outside [1, " + str(row_length) + "]");
    int32_t* o = out + r * (row_length + 1);
    std::fill(o, o + row_length + 1, 0);
    quantize_row(pmfs + r * row_length, m, precision, r, o);
  }
}

}  // namespace fedrs::coder
