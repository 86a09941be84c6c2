// Helpers shared by the pybind11 binding files: every buffer is checked again
// here (dtype, shape, strides, alignment) before a kernel sees it, so nothing a
// Python caller passes can make a kernel read or write out of bounds.
//
// Rules of every binding: array arguments are taken as py::object and must be
// numpy arrays (require_array, exact_dtype_array / optional_vector for the
// ones that may be None, output_array for buffers the kernel writes): nothing
// is converted, so a scalar never becomes a 0-d array and an output never a
// lost temporary. Size arguments are bounded (check_size with the kMax*
// constants of common.hpp) before anything is allocated from them.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "calibkit/binning.hpp"
#include "calibkit/common.hpp"

namespace calibkit {
namespace bind {

namespace py = pybind11;

inline std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// The Python type of any object, for messages ("list", "numpy.float64", ...).
inline std::string type_name(const py::handle& h) { return Py_TYPE(h.ptr())->tp_name; }

template <class T>
struct DtypeLabel;
template <>
struct DtypeLabel<double> {
    static constexpr const char* value = "float64";
};
template <>
struct DtypeLabel<int64_t> {
    static constexpr const char* value = "int64";
};
template <>
struct DtypeLabel<uint8_t> {
    static constexpr const char* value = "uint8";
};

template <class T>
bool is_dtype(const py::array& a) {
    // equal(), not is(): an unpickled or otherwise rebuilt dtype is equal to the canonical one but not the same
    // object. A byte-swapped dtype is not equal to the native one.
    return a.dtype().equal(py::dtype::of<T>());
}

inline void require_dtype(bool ok, const py::array& a, const char* name, const char* expected) {
    if (!ok) throw py::type_error(std::string(name) + " must have dtype " + expected + ", got " + dtype_name(a));
}

// A required array argument. Every array argument of a binding is taken as a py::object and must be a
// numpy ndarray (subclasses such as memmap included): a list, scalar, bytes or any other object is a
// TypeError here, never converted on the fly (a converted output would be written into a lost temporary,
// and a converted scalar would be a 0-d array).
inline py::array require_array(const py::handle& obj, const char* name) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy array, got " + type_name(obj));
    return py::reinterpret_borrow<py::array>(obj);
}

inline std::string ndim_text(const py::array& a) {
    return std::to_string(a.ndim()) + "-D array" + (a.ndim() == 0 ? " (a scalar)" : "");
}

inline void require_ndim(const py::array& a, const char* name, py::ssize_t ndim) {
    if (a.ndim() != ndim)
        throw py::value_error(std::string(name) + " must be a " + std::to_string(ndim) + "-D array, got a " +
                              ndim_text(a));
}

constexpr bool kLittleEndianHost = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;

inline void check_strides(const py::array& a, const char* name) {
    const auto item = static_cast<int64_t>(a.itemsize());
    // Native byte order: NumPy spells it '=' (or '|' for one-byte types) and never spells the native order
    // explicitly; reading the byteorder character costs no Python attribute lookup.
    const char order = a.dtype().byteorder();
    if (order == (kLittleEndianHost ? '>' : '<'))
        throw py::value_error(std::string(name) + " must be in native byte order, got dtype " + dtype_name(a));
    if (reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(item) != 0)
        throw py::value_error(std::string(name) + " must be aligned to its item size");
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        if (a.strides(d) % item != 0)
            throw py::value_error(std::string(name) + " has strides that are not a multiple of its item size");
}

template <class T>
Matrix<T> matrix(const py::array& a, const char* name) {
    require_ndim(a, name, 2);
    check_strides(a, name);
    return Matrix<T>{static_cast<const char*>(a.data()), static_cast<int64_t>(a.shape(0)),
                     static_cast<int64_t>(a.shape(1)), static_cast<int64_t>(a.strides(0)),
                     static_cast<int64_t>(a.strides(1))};
}

template <class T>
Vector<T> vector(const py::array& a, const char* name, int64_t expected_size) {
    require_ndim(a, name, 1);
    if (static_cast<int64_t>(a.shape(0)) != expected_size)
        throw py::value_error(std::string(name) + " has length " + std::to_string(a.shape(0)) + ", expected " +
                              std::to_string(expected_size));
    check_strides(a, name);
    return Vector<T>{static_cast<const char*>(a.data()), static_cast<int64_t>(a.shape(0)),
                     static_cast<int64_t>(a.strides(0))};
}

// A 1-D array of any length, of exactly dtype T.
template <class T>
Vector<T> typed_vector(const py::array& a, const char* name) {
    require_ndim(a, name, 1);
    require_dtype(is_dtype<T>(a), a, name, DtypeLabel<T>::value);
    return vector<T>(a, name, static_cast<int64_t>(a.shape(0)));
}

// An array argument that may also be None (the caller checks is_none() first): a numpy array of exactly
// dtype T, else a TypeError naming what came. Nothing is converted.
template <class T>
py::array exact_dtype_array(const py::object& obj, const char* name) {
    const bool is_array = py::isinstance<py::array>(obj);
    if (!is_array || !is_dtype<T>(py::reinterpret_borrow<py::array>(obj)))
        throw py::type_error(std::string(name) + " must be a numpy array of dtype " + DtypeLabel<T>::value +
                             " or None, got " +
                             (is_array ? "an array of dtype " + dtype_name(py::reinterpret_borrow<py::array>(obj))
                                       : type_name(obj)));
    return py::reinterpret_borrow<py::array>(obj);
}

// An optional 1-D input of length n and exactly dtype T: None gives a view with null data.
template <class T>
Vector<T> optional_vector(const py::object& obj, const char* name, int64_t n) {
    if (obj.is_none()) return Vector<T>{nullptr, 0, 0};
    return vector<T>(exact_dtype_array<T>(obj, name), name, n);
}

// A shape as Python prints it: (3,), (4, 10).
inline std::string shape_text(const std::vector<int64_t>& shape) {
    std::string out = "(";
    for (size_t j = 0; j < shape.size(); ++j) out += (j ? ", " : "") + std::to_string(shape[j]);
    return out + (shape.size() == 1 ? ",)" : ")");
}

// An output (or in-place state) buffer the kernel writes into: a numpy array of exactly dtype T and
// exactly `shape`, C-contiguous, aligned and writeable. Never cast or copied: writing into a converted
// temporary would lose the result silently.
template <class T>
T* output_array(const py::object& obj, const char* name, std::initializer_list<int64_t> shape) {
    py::array a = require_array(obj, name);
    require_dtype(is_dtype<T>(a), a, name, DtypeLabel<T>::value);
    bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
    py::ssize_t d = 0;
    for (int64_t s : shape)
        if (same && a.shape(d++) != s) same = false;
    if (!same) {
        std::vector<int64_t> got;
        for (py::ssize_t j = 0; j < a.ndim(); ++j) got.push_back(static_cast<int64_t>(a.shape(j)));
        throw py::value_error(std::string(name) + " must have shape " + shape_text(std::vector<int64_t>(shape)) +
                              ", got " + shape_text(got));
    }
    check_strides(a, name);
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    if (!a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
    return static_cast<T*>(a.mutable_data());
}

// Calls f(tag) with tag a T* (nullptr) for the floating dtype of `a`.
template <class F>
auto dispatch_float(const py::array& a, const char* name, F&& f) {
    const auto kind = a.dtype().kind();
    if (kind == 'f') {
        switch (a.itemsize()) {
            case 2: return f(static_cast<half*>(nullptr));
            case 4: return f(static_cast<float*>(nullptr));
            case 8: return f(static_cast<double*>(nullptr));
            default: break;
        }
    }
    throw py::type_error(std::string(name) + " must be float16, float32 or float64, got " + dtype_name(a));
}

inline Weights weights(const py::object& w, int64_t n) {
    Weights out;
    out.v = optional_vector<double>(w, "sample_weight", n);
    return out;
}

// A size argument within [lo, hi], checked before anything is allocated from it.
inline void check_size(int64_t value, const char* name, int64_t lo, int64_t hi) {
    if (value < lo) throw py::value_error(std::string(name) + " must be >= " + std::to_string(lo) + ", got " +
                                          std::to_string(value));
    if (value > hi) throw py::value_error(std::string(name) + " must be <= " + std::to_string(hi) + ", got " +
                                          std::to_string(value));
}

// Sizes of grids (the smooth ECE's): a 1-D int64 array of 1..max_grids sizes, each >= 2, at most max_cells
// points in all; checked before anything is allocated from them. Errors name `name`.
inline std::vector<int64_t> checked_grid_sizes(const py::object& obj, const std::string& name, int64_t max_grids,
                                               int64_t max_cells) {
    const Vector<int64_t> v = typed_vector<int64_t>(require_array(obj, name.c_str()), name.c_str());
    check_size(v.size, ("len(" + name + ")").c_str(), 1, max_grids);
    std::vector<int64_t> sizes;
    int64_t cells = 0;
    for (int64_t j = 0; j < v.size; ++j) {
        const int64_t g = v.raw(j);
        check_size(g, (name + "[j]").c_str(), 2, max_cells);
        cells += g;
        check_size(cells, ("sum(" + name + ")").c_str(), 2, max_cells);
        sizes.push_back(g);
    }
    return sizes;
}

inline py::tuple status_tuple(const Status& s) { return py::make_tuple(s.code, s.row, s.col, s.value); }

template <class V>
py::array_t<V> to_array(const std::vector<V>& v) {
    py::array_t<V> out(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
}

inline py::dict bin_dict(const BinSums& b) {
    py::dict d;
    d["count"] = to_array(b.count);
    d["weight"] = to_array(b.weight);
    d["sum_score"] = to_array(b.sum_score);
    d["sum_target"] = to_array(b.sum_target);
    return d;
}

inline py::dict totals_dict(const Totals& t) {
    py::dict d;
    d["count"] = t.count;
    d["weight"] = t.weight;
    d["correct"] = t.correct;
    d["confidence"] = t.confidence;
    d["brier"] = t.brier;
    d["nll"] = t.nll;
    return d;
}

}  // namespace bind
}  // namespace calibkit
