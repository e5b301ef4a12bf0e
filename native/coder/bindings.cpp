// pybind11 face of the coder: numpy int32 arrays and bytes in, bytes and numpy arrays out.
// The GIL is released while tables are prepared and while symbols are coded.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "rans.hpp"

namespace py = pybind11;
using fedrs::coder::ArgumentError;
using fedrs::coder::Encoded;
using fedrs::coder::StreamDecoder;
using fedrs::coder::StreamError;
using fedrs::coder::TableArrays;
using fedrs::coder::TableError;
using fedrs::coder::Tables;

namespace {

using I32Array = py::array_t<int32_t, py::array::c_style>;
using F32Array = py::array_t<float, py::array::c_style>;

void require_1d(const I32Array& a, const char* name) {
  if (a.ndim() != 1)
    throw ArgumentError(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                        " dimensions");
}

TableArrays table_arrays(const I32Array& cdfs, const I32Array& cdf_lengths,
                         const I32Array& offsets) {
  if (cdfs.ndim() != 2)
    throw TableError("cdfs must be 2-D (tables, entries), got " + std::to_string(cdfs.ndim()) +
                     " dimensions");
  require_1d(cdf_lengths, "cdf_lengths");
  require_1d(offsets, "offsets");
  if (cdf_lengths.shape(0) != cdfs.shape(0) || offsets.shape(0) != cdfs.shape(0))
    throw TableError("cdfs has " + std::to_string(cdfs.shape(0)) + " rows but cdf_lengths has " +
                     std::to_string(cdf_lengths.shape(0)) + " and offsets " +
                     std::to_string(offsets.shape(0)) + " entries");
  TableArrays a;
  a.cdfs = cdfs.data();
  a.num_tables = cdfs.shape(0);
  a.row_length = cdfs.shape(1);
  a.cdf_lengths = cdf_lengths.data();
  a.offsets = offsets.data();
  return a;
}

std::unique_ptr<Tables> make_tables(const I32Array& cdfs, const I32Array& cdf_lengths,
                                    const I32Array& offsets, bool enc, bool dec) {
  const TableArrays a = table_arrays(cdfs, cdf_lengths, offsets);
  py::gil_scoped_release nogil;
  return std::make_unique<Tables>(a, enc, dec);
}

int check_threads(int threads) {
  if (threads < 1 || threads > 256)
    throw ArgumentError("threads must be in [1, 256], got " + std::to_string(threads));
  return threads;
}

py::bytes encode_impl(const Tables& tables, const I32Array& symbols, const I32Array& indexes,
                      int threads) {
  require_1d(symbols, "symbols");
  require_1d(indexes, "indexes");
  if (symbols.shape(0) != indexes.shape(0))
    throw ArgumentError("symbols has " + std::to_string(symbols.shape(0)) +
                        " entries but indexes has " + std::to_string(indexes.shape(0)));
  check_threads(threads);
  const uint64_t count = static_cast<uint64_t>(symbols.shape(0));
  const int32_t* s = symbols.data();
  const int32_t* i = indexes.data();
  Encoded encoded;
  {
    py::gil_scoped_release nogil;
    encoded = fedrs::coder::encode(tables, s, i, count, threads);
  }
  const size_t size = encoded.size();
  PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
  if (obj == nullptr) throw py::error_already_set();
  py::bytes result = py::reinterpret_steal<py::bytes>(obj);
  auto* buffer = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(obj));
  {
    py::gil_scoped_release nogil;  // the new bytes object is not visible to anyone else yet
    encoded.write_to(buffer);
  }
  return result;
}

py::array_t<int32_t> decode_impl(const Tables& tables, const py::bytes& stream,
                                 const I32Array& indexes, int threads) {
  require_1d(indexes, "indexes");
  check_threads(threads);
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(stream.ptr(), &data, &size) != 0) throw py::error_already_set();
  const uint64_t count = static_cast<uint64_t>(indexes.shape(0));
  py::array_t<int32_t> out(static_cast<py::ssize_t>(count));
  int32_t* o = out.mutable_data();
  const int32_t* i = indexes.data();
  {
    py::gil_scoped_release nogil;
    fedrs::coder::decode(tables, reinterpret_cast<const uint8_t*>(data),
                         static_cast<size_t>(size), i, count, o, threads);
  }
  return out;
}

std::unique_ptr<StreamDecoder> make_stream_decoder(const py::bytes& stream) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(stream.ptr(), &data, &size) != 0) throw py::error_already_set();
  py::gil_scoped_release nogil;  // the argument keeps the bytes alive; they are copied
  return std::make_unique<StreamDecoder>(reinterpret_cast<const uint8_t*>(data),
                                         static_cast<size_t>(size));
}

py::array_t<int32_t> stream_decode_impl(StreamDecoder& decoder, const Tables& tables,
                                        const I32Array& indexes) {
  require_1d(indexes, "indexes");
  const uint64_t count = static_cast<uint64_t>(indexes.shape(0));
  py::array_t<int32_t> out(static_cast<py::ssize_t>(count));
  int32_t* o = out.mutable_data();
  const int32_t* i = indexes.data();
  {
    py::gil_scoped_release nogil;
    decoder.decode(tables, i, count, o);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_coder, m) {
  m.doc() = "Native rANS coder of fedrs (private; use fedrs.coder).";
  m.attr("PRECISION") = fedrs::coder::kPrecisionBits;
  m.attr("FORMAT_VERSION") = static_cast<int>(fedrs::coder::kVersion);
#ifdef FEDRS_DEBUG_BUILD
  m.attr("DEBUG_BUILD") = true;
#else
  m.attr("DEBUG_BUILD") = false;
#endif

  py::register_exception<TableError>(m, "TableError", PyExc_ValueError);
  py::register_exception<StreamError>(m, "StreamError", PyExc_ValueError);
  py::register_exception<ArgumentError>(m, "ArgumentError", PyExc_ValueError);

  py::class_<Tables>(m, "Tables")
      .def(py::init([](const I32Array& cdfs, const I32Array& cdf_lengths,
                       const I32Array& offsets) {
             return make_tables(cdfs, cdf_lengths, offsets, true, true);
           }),
           py::arg("cdfs").noconvert(), py::arg("cdf_lengths").noconvert(),
           py::arg("offsets").noconvert())
      .def_property_readonly("num_tables", &Tables::num_tables)
      .def(
          "encode",
          [](const Tables& t, const I32Array& symbols, const I32Array& indexes, int threads) {
            return encode_impl(t, symbols, indexes, threads);
          },
          py::arg("symbols").noconvert(), py::arg("indexes").noconvert(), py::arg("threads") = 1)
      .def(
          "decode",
          [](const Tables& t, const py::bytes& stream, const I32Array& indexes, int threads) {
            return decode_impl(t, stream, indexes, threads);
          },
          py::arg("stream"), py::arg("indexes").noconvert(), py::arg("threads") = 1);

  py::class_<StreamDecoder>(m, "StreamDecoder")
      .def(py::init(&make_stream_decoder), py::arg("stream"))
      .def_property_readonly("count", &StreamDecoder::count)
      .def_property_readonly("position", &StreamDecoder::position)
      .def("decode", &stream_decode_impl, py::arg("tables"), py::arg("indexes").noconvert())
      .def("finish", &StreamDecoder::finish);

  m.def(
      "encode_with_indexes",
      [](const I32Array& symbols, const I32Array& indexes, const I32Array& cdfs,
         const I32Array& cdf_lengths, const I32Array& offsets, int threads) {
        const auto tables = make_tables(cdfs, cdf_lengths, offsets, true, false);
        return encode_impl(*tables, symbols, indexes, threads);
      },
      py::arg("symbols").noconvert(), py::arg("indexes").noconvert(),
      py::arg("cdfs").noconvert(), py::arg("cdf_lengths").noconvert(),
      py::arg("offsets").noconvert(), py::arg("threads") = 1);

  m.def(
      "decode_with_indexes",
      [](const py::bytes& stream, const I32Array& indexes, const I32Array& cdfs,
         const I32Array& cdf_lengths, const I32Array& offsets, int threads) {
        const auto tables = make_tables(cdfs, cdf_lengths, offsets, false, true);
        return decode_impl(*tables, stream, indexes, threads);
      },
      py::arg("stream"), py::arg("indexes").noconvert(), py::arg("cdfs").noconvert(),
      py::arg("cdf_lengths").noconvert(), py::arg("offsets").noconvert(),
      py::arg("threads") = 1);

  m.def(
      "stream_symbol_count",
      [](const py::bytes& stream) {
        char* data = nullptr;
        Py_ssize_t size = 0;
        if (PyBytes_AsStringAndSize(stream.ptr(), &data, &size) != 0)
          throw py::error_already_set();
        return fedrs::coder::stream_symbol_count(reinterpret_cast<const uint8_t*>(data),
                                                 static_cast<size_t>(size));
      },
      py::arg("stream"));

  m.def(
      "pmf_to_quantized_cdf",
      [](const F32Array& pmfs, const I32Array& lengths, int precision) {
        if (pmfs.ndim() != 2) throw ArgumentError("pmfs must be 2-D");
        require_1d(lengths, "lengths");
        if (lengths.shape(0) != pmfs.shape(0))
          throw ArgumentError("pmfs has " + std::to_string(pmfs.shape(0)) +
                              " rows but lengths has " + std::to_string(lengths.shape(0)));
        const int64_t rows = pmfs.shape(0);
        const int64_t width = pmfs.shape(1);
        py::array_t<int32_t> out({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(width + 1)});
        int32_t* o = out.mutable_data();
        const float* p = pmfs.data();
        const int32_t* l = lengths.data();
        {
          py::gil_scoped_release nogil;
          fedrs::coder::pmf_to_quantized_cdf(p, rows, width, l, precision, o);
        }
        return out;
      },
      py::arg("pmfs").noconvert(), py::arg("lengths").noconvert(), py::arg("precision") = 16);
}
