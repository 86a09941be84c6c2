// Bindings of softmax.hpp (scaling losses) and pav.hpp (isotonic regression).
// Each function checks its buffers and releases the GIL around the kernel.
#include "bindings.hpp"
#include "calibkit/pav.hpp"
#include "calibkit/softmax.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

py::dict temperature_nll_py(const py::array& scores, const py::array& labels, const py::object& sample_weight,
                            double inverse_temperature) {
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    if (!(inverse_temperature > 0.0) || !std::isfinite(inverse_temperature))
        throw py::value_error("inverse_temperature must be a positive finite number");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Weights w = weights(sample_weight, s.rows);
        TemperatureSums r;
        {
            py::gil_scoped_release release;
            r = temperature_nll<T>(s, y, w, inverse_temperature);
        }
        py::dict d;
        d["count"] = r.count;
        d["weight"] = r.weight;
        d["loss"] = r.loss;
        d["d1"] = r.d1;
        d["d2"] = r.d2;
        d["status"] = status_tuple(r.status);
        return d;
    });
}

const double* parameter(const py::array& a, const char* name, int64_t K) {
    if (!is_dtype<double>(a) || a.ndim() != 1 || a.shape(0) != K || !(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be a contiguous float64 array of length K");
    return static_cast<const double*>(a.data());
}

py::dict vector_scaling_nll_py(const py::array& scores, const py::array& labels, const py::object& sample_weight,
                               const py::array& scale, const py::array& bias) {
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Weights w = weights(sample_weight, s.rows);
        const double* a = parameter(scale, "scale", s.cols);
        const double* c = parameter(bias, "bias", s.cols);
        VectorScalingSums r;
        {
            py::gil_scoped_release release;
            r = vector_scaling_nll<T>(s, y, w, a, c);
        }
        py::dict d;
        d["count"] = r.count;
        d["weight"] = r.weight;
        d["loss"] = r.loss;
        d["grad_scale"] = to_array(r.grad_scale);
        d["grad_bias"] = to_array(r.grad_bias);
        d["status"] = status_tuple(r.status);
        return d;
    });
}

Vector<double> float64_vector(const py::array& a, const char* name, int64_t n) {
    require_dtype(is_dtype<double>(a), a, name, "float64");
    return vector<double>(a, name, n);
}

// The caller (calibkit.calibrators) has checked that values are finite and weights positive.
py::dict isotonic_fit_py(const py::array& y, const py::object& x, const py::object& sample_weight, bool increasing) {
    if (y.ndim() != 1) throw py::value_error("y must be 1-D");
    const int64_t n = y.shape(0);
    const Vector<double> yv = float64_vector(y, "y", n);
    Vector<double> xv{nullptr, 0, 0}, wv{nullptr, 0, 0};
    py::array xa, wa;
    if (!x.is_none()) {
        xa = py::reinterpret_borrow<py::array>(x);
        xv = float64_vector(xa, "x", n);
    }
    if (!sample_weight.is_none()) {
        wa = py::reinterpret_borrow<py::array>(sample_weight);
        wv = float64_vector(wa, "sample_weight", n);
    }
    py::array_t<double> fitted(n);
    double* f = fitted.mutable_data();
    py::object order_obj = py::none();
    PavBlocks blocks;
    if (xv.data) {
        py::array_t<int64_t> order(n);
        int64_t* o = order.mutable_data();
        {
            py::gil_scoped_release release;
            blocks = isotonic(yv, wv, wv.data != nullptr, &xv, increasing, o, f);
        }
        order_obj = order;
    } else {
        py::gil_scoped_release release;
        blocks = isotonic(yv, wv, wv.data != nullptr, nullptr, increasing, nullptr, f);
    }
    py::dict d;
    d["fitted"] = fitted;
    d["order"] = order_obj;
    d["blocks"] = to_array(blocks.starts);
    d["values"] = to_array(blocks.values);
    d["weights"] = to_array(blocks.weights);
    return d;
}

}  // namespace

void bind_calibrators(py::module_& m) {
    m.def("temperature_nll", &temperature_nll_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("inverse_temperature"));
    m.def("vector_scaling_nll", &vector_scaling_nll_py, py::arg("scores"), py::arg("labels"),
          py::arg("sample_weight"), py::arg("scale"), py::arg("bias"));
    m.def("isotonic_fit", &isotonic_fit_py, py::arg("y"), py::arg("x"), py::arg("sample_weight"),
          py::arg("increasing"));
}
