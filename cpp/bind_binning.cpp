// Bindings of binning.hpp. Each function releases the GIL around the kernel.
#include "bindings.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

// The class-wise spec of a call: off when n_bins == 0; equal-width, or explicit per-class edges (K, M + 1).
ClasswiseSpec classwise_spec(int64_t K, int64_t n_bins, const py::object& class_edges, py::array_t<double>& keep) {
    if (n_bins < 0) throw py::value_error("classwise_bins must be >= 0");
    if (n_bins == 0) {
        if (!class_edges.is_none()) throw py::value_error("class_edges needs classwise_bins >= 1");
        return ClasswiseSpec();
    }
    const double* edge_values = nullptr;
    if (!class_edges.is_none()) {
        keep = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(class_edges);
        if (!keep || keep.ndim() != 2 || keep.shape(0) != K || keep.shape(1) != n_bins + 1)
            throw py::value_error("class_edges must be a float64 array of shape (K, n_bins + 1)");
        edge_values = keep.data();
    }
    return ClasswiseSpec(K, n_bins, edge_values);
}

void check_inverse_temperature(double inv_t, bool from_logits) {
    if (!(inv_t > 0.0) || !std::isfinite(inv_t))
        throw py::value_error("inverse_temperature must be a finite number > 0");
    if (!from_logits && inv_t != 1.0) throw py::value_error("inverse_temperature applies to logits only");
}

py::dict top_label_stats_py(const py::array& scores, const py::array& labels, const py::object& sample_weight,
                            bool from_logits, int64_t n_bins, double nll_eps, bool with_nll,
                            const py::object& conf_out, const py::object& correct_out, double inverse_temperature,
                            int64_t classwise_bins, const py::object& class_edges) {
    if (n_bins < 0) throw py::value_error("n_bins must be >= 0");
    check_inverse_temperature(inverse_temperature, from_logits);
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Weights w = weights(sample_weight, s.rows);
        py::array_t<double> edges_keep;
        const ClasswiseSpec cw = classwise_spec(s.cols, classwise_bins, class_edges, edges_keep);
        double* conf = nullptr;
        uint8_t* correct = nullptr;
        if (!conf_out.is_none()) {
            auto a = conf_out.cast<py::array_t<double, 0>>();
            if (a.ndim() != 1 || a.shape(0) != s.rows || !(a.flags() & py::array::c_style) || !a.writeable())
                throw py::value_error("conf_out must be a writeable contiguous float64 array of length N");
            conf = a.mutable_data();
        }
        if (!correct_out.is_none()) {
            auto a = correct_out.cast<py::array_t<uint8_t, 0>>();
            if (a.ndim() != 1 || a.shape(0) != s.rows || !(a.flags() & py::array::c_style) || !a.writeable())
                throw py::value_error("correct_out must be a writeable contiguous uint8 array of length N");
            correct = a.mutable_data();
        }
        BinningResult r;
        {
            py::gil_scoped_release release;
            r = top_label_stats<T>(s, y, w, from_logits, n_bins, nll_eps, with_nll, conf, correct,
                                   inverse_temperature, cw);
        }
        py::dict d = bin_dict(r.bins);
        d["totals"] = totals_dict(r.totals);
        d["status"] = status_tuple(r.status);
        if (cw.on()) d["classwise"] = bin_dict(r.classwise);
        return d;
    });
}

template <class L>
py::dict binary_stats_typed(const py::array& probs, const py::array& targets, const py::object& sample_weight,
                            int64_t n_bins, const py::object& edges, double nll_eps) {
    return dispatch_float(probs, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        if (probs.ndim() != 1) throw py::value_error("scores must be 1-D");
        const Vector<T> p = vector<T>(probs, "scores", probs.shape(0));
        const Vector<L> y = vector<L>(targets, "labels", p.size);
        const Weights w = weights(sample_weight, p.size);
        const double* edge_values = nullptr;
        py::array_t<double> e;
        if (!edges.is_none()) {
            e = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(edges);
            if (!e || e.ndim() != 1 || e.shape(0) != n_bins + 1)
                throw py::value_error("edges must be a 1-D float64 array of length n_bins + 1");
            edge_values = e.data();
        }
        BinningResult r;
        {
            py::gil_scoped_release release;
            r = binary_stats<T, L>(p, y, w, n_bins, edge_values, nll_eps);
        }
        py::dict d = bin_dict(r.bins);
        d["totals"] = totals_dict(r.totals);
        d["status"] = status_tuple(r.status);
        return d;
    });
}

py::dict binary_stats_py(const py::array& probs, const py::array& targets, const py::object& sample_weight,
                         int64_t n_bins, const py::object& edges, double nll_eps) {
    if (n_bins < 0) throw py::value_error("n_bins must be >= 0");
    if (is_dtype<int64_t>(targets))
        return binary_stats_typed<int64_t>(probs, targets, sample_weight, n_bins, edges, nll_eps);
    if (is_dtype<uint8_t>(targets))
        return binary_stats_typed<uint8_t>(probs, targets, sample_weight, n_bins, edges, nll_eps);
    throw py::type_error("labels must have dtype int64 or uint8, got " + dtype_name(targets));
}

// Class-wise bins alone: the fused pass of top_label_stats without top-label bins.
py::dict classwise_stats_py(const py::array& scores, const py::array& labels, const py::object& sample_weight,
                            bool from_logits, int64_t n_bins, const py::object& class_edges) {
    if (n_bins < 1) throw py::value_error("n_bins must be >= 1");
    py::dict r = top_label_stats_py(scores, labels, sample_weight, from_logits, 0, 0.0, false, py::none(), py::none(),
                                    1.0, n_bins, class_edges);
    py::dict d = r["classwise"].cast<py::dict>();
    d["status"] = r["status"];
    return d;
}

}  // namespace

void bind_binning(py::module_& m) {
    m.def("top_label_stats", &top_label_stats_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("from_logits"), py::arg("n_bins"), py::arg("nll_eps"), py::arg("with_nll") = true,
          py::arg("conf_out") = py::none(), py::arg("correct_out") = py::none(),
          py::arg("inverse_temperature") = 1.0, py::arg("classwise_bins") = 0, py::arg("class_edges") = py::none());
    m.def("binary_stats", &binary_stats_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("n_bins"), py::arg("edges"), py::arg("nll_eps"));
    m.def("classwise_stats", &classwise_stats_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("from_logits"), py::arg("n_bins"), py::arg("class_edges"));
}
