// Helpers shared by the pybind11 binding files: every buffer is checked again
// here (dtype, shape, strides, alignment) before a kernel sees it, so nothing a
// Python caller passes can make a kernel read out of bounds.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>

#include "calibkit/binning.hpp"
#include "calibkit/common.hpp"

namespace calibkit {
namespace bind {

namespace py = pybind11;

inline std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

inline void check_strides(const py::array& a, const char* name) {
    const auto item = static_cast<int64_t>(a.itemsize());
    if (reinterpret_cast<std::uintptr_t>(a.data()) % static_cast<std::uintptr_t>(item) != 0)
        throw py::value_error(std::string(name) + " must be aligned to its item size");
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        if (a.strides(d) % item != 0)
            throw py::value_error(std::string(name) + " has strides that are not a multiple of its item size");
    if (!a.dtype().attr("isnative").cast<bool>())
        throw py::value_error(std::string(name) + " must be in native byte order");
}

template <class T>
Matrix<T> matrix(const py::array& a, const char* name) {
    if (a.ndim() != 2) throw py::value_error(std::string(name) + " must be 2-D");
    check_strides(a, name);
    return Matrix<T>{static_cast<const char*>(a.data()), static_cast<int64_t>(a.shape(0)),
                     static_cast<int64_t>(a.shape(1)), static_cast<int64_t>(a.strides(0)),
                     static_cast<int64_t>(a.strides(1))};
}

template <class T>
Vector<T> vector(const py::array& a, const char* name, int64_t expected_size) {
    if (a.ndim() != 1) throw py::value_error(std::string(name) + " must be 1-D");
    if (static_cast<int64_t>(a.shape(0)) != expected_size)
        throw py::value_error(std::string(name) + " has length " + std::to_string(a.shape(0)) + ", expected " +
                              std::to_string(expected_size));
    check_strides(a, name);
    return Vector<T>{static_cast<const char*>(a.data()), static_cast<int64_t>(a.shape(0)),
                     static_cast<int64_t>(a.strides(0))};
}

template <class T>
bool is_dtype(const py::array& a) {
    // equal(), not is(): an unpickled or otherwise rebuilt dtype is equal to the canonical one but not the same object
    return a.dtype().equal(py::dtype::of<T>());
}

inline void require_dtype(bool ok, const py::array& a, const char* name, const char* expected) {
    if (!ok) throw py::type_error(std::string(name) + " must have dtype " + expected + ", got " + dtype_name(a));
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
    if (w.is_none()) return out;
    py::array a = py::reinterpret_borrow<py::array>(w);
    require_dtype(is_dtype<double>(a), a, "sample_weight", "float64");
    out.v = vector<double>(a, "sample_weight", n);
    return out;
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
