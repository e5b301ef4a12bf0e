// Interleaved 64-bit rANS coder for symbols coded with indexed, quantised CDF tables.
//
// This header is free of Python: the pybind11 binding (bindings.cpp) and the fuzz harness
// (fuzz/fuzz_coder.cpp) both build on it.  The stream format is described in README.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace fedrs::coder {

// Bits of precision of every CDF table: entries run from 0 to kTotal.
inline constexpr int kPrecisionBits = 16;
inline constexpr uint32_t kTotal = 1u << kPrecisionBits;
// Longest accepted CDF: 65535 regular symbols, the escape symbol, and the closing entry.
inline constexpr int64_t kMaxCdfLength = 65537;
// Largest symbol count a stream may declare.
inline constexpr uint64_t kMaxSymbols = 1ull << 40;
// Format constants.
inline constexpr uint8_t kMagic0 = 'F';
inline constexpr uint8_t kMagic1 = 'R';
inline constexpr uint8_t kVersion = 1;
// A stream is cut into independent chunks of about this many symbols (see chunk_count()).
inline constexpr int kChunkShift = 21;

// A CDF table set that fails validation.
class TableError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A stream that is malformed, corrupted, or does not match the decoder's arguments.
class StreamError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Bad arguments that are neither tables nor stream (lengths, table indexes, symbols).
class ArgumentError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Views of the caller's table arrays (int32, C order): cdfs is (num_tables, row_length).
struct TableArrays {
  const int32_t* cdfs = nullptr;
  int64_t num_tables = 0;
  int64_t row_length = 0;
  const int32_t* cdf_lengths = nullptr;
  const int32_t* offsets = nullptr;
};

// Encoder data of one (table, symbol): a reciprocal of the frequency (Rans64 style).
struct EncEntry {
  uint64_t rcp;     // reciprocal of freq, see make_entry()
  uint32_t bias;    // start (or start + kTotal - 1 when freq == 1)
  uint16_t cmpl;    // kTotal - freq
  uint8_t shift;    // reciprocal shift
  uint8_t escape;   // 1 for the escape symbol, which zero-frequency symbols share: the value
                    // also goes to the escape bits
};

struct EncTable {
  const EncEntry* entries;  // n + 1 entries, the last one the escape symbol
  uint32_t n;               // number of regular symbols
  int32_t offset;           // value of regular symbol 0
};

struct DecTable {
  const uint32_t* cdf;       // n + 2 entries, 0 ... kTotal
  const uint16_t* buckets;   // first symbol of each slot bucket
  uint32_t shift;            // slot >> shift is the bucket
  uint32_t n;                // number of regular symbols (symbol n is the escape)
  int32_t offset;            // value of regular symbol 0
};

// Validated, prepared CDF tables.  Building validates every table (TableError) and prepares the
// encoder and/or the decoder side; an object is immutable afterwards and may be shared between
// threads.
class Tables {
 public:
  Tables(const TableArrays& arrays, bool for_encoding, bool for_decoding);
  Tables(const Tables&) = delete;
  Tables& operator=(const Tables&) = delete;

  int64_t num_tables() const { return num_tables_; }
  bool can_encode() const { return !enc_.empty() || num_tables_ == 0; }
  bool can_decode() const { return !dec_.empty() || num_tables_ == 0; }
  const EncTable* enc() const { return enc_.data(); }
  const DecTable* dec() const { return dec_.data(); }

 private:
  int64_t num_tables_ = 0;
  std::vector<EncTable> enc_;
  std::vector<DecTable> dec_;
  std::vector<EncEntry> enc_entries_;
  std::vector<uint32_t> cdf_values_;
  std::vector<uint16_t> buckets_;
};

// Result of encoding: assembled into the final stream by write_to(), which also appends the CRC.
class Encoded {
 public:
  size_t size() const;
  void write_to(uint8_t* out) const;  // exactly size() bytes

 private:
  friend Encoded encode(const Tables&, const int32_t*, const int32_t*, uint64_t, int);
  struct Chunk {
    std::unique_ptr<uint32_t[]> buffer;
    const uint32_t* words = nullptr;  // states, then renormalisation words
    uint64_t num_words = 0;
    std::vector<uint8_t> escapes;
  };
  std::vector<uint8_t> header_;
  std::vector<Chunk> chunks_;
};

// Encodes count symbols, symbol i with table indexes[i].  Raises ArgumentError for an index
// outside [0, num_tables).  threads >= 1 chunks are coded concurrently; the output does not
// depend on threads.
Encoded encode(const Tables& tables, const int32_t* symbols, const int32_t* indexes,
               uint64_t count, int threads);

// Decodes a stream of count symbols into out.  Raises StreamError for any stream that this
// encoder could not have produced from these indexes and tables, ArgumentError for a bad index.
void decode(const Tables& tables, const uint8_t* data, size_t size, const int32_t* indexes,
            uint64_t count, int32_t* out, int threads);

// Number of symbols declared by a stream's header (StreamError if the header is malformed).
uint64_t stream_symbol_count(const uint8_t* data, size_t size);

// Decodes one stream of encode() a few symbols at a time, in order, each call naming the tables
// and indexes of its symbols (so the tables of later symbols may depend on earlier ones, as in
// autoregressive models).  The symbols decoded over all calls are those decode() gives for the
// concatenated indexes and the same tables.
//
// The constructor copies the stream and checks its layout and CRC (StreamError).  decode()
// checks its arguments first (ArgumentError for a bad index or unprepared tables, StreamError
// for more symbols than remain) and then leaves the decoder as it was; a StreamError while
// decoding (data this encoder cannot have written with these tables and indexes) leaves it
// failed, and every later call raises StreamError.  finish() raises StreamError unless every
// symbol was decoded and every check passed.  Calls are serialised by a mutex.
class StreamDecoder {
 public:
  StreamDecoder(const uint8_t* data, size_t size);
  ~StreamDecoder();
  StreamDecoder(const StreamDecoder&) = delete;
  StreamDecoder& operator=(const StreamDecoder&) = delete;

  uint64_t count() const;     // symbols in the stream
  uint64_t position() const;  // symbols decoded so far
  void decode(const Tables& tables, const int32_t* indexes, uint64_t n, int32_t* out);
  void finish() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// CompressAI's pmf_to_quantized_cdf for rows of a batch: row b has lengths[b] probabilities
// pmfs[b, :lengths[b]] and gets lengths[b] + 1 CDF entries in out[b, :] (rest zero-filled).
// out has row length row_length + 1.  Raises std::invalid_argument for a bad pmf.
void pmf_to_quantized_cdf(const float* pmfs, int64_t rows, int64_t row_length,
                          const int32_t* lengths, int precision, int32_t* out);

// zlib's CRC-32 (the checksum of the stream trailer).
uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0);

// Number of chunks and interleaved lanes of a stream of n symbols (format constants).
uint64_t chunk_count(uint64_t n);
int lane_count(uint64_t chunk_symbols);

}  // namespace fedrs::coder
