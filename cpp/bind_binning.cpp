// Bindings of binning.hpp. Each function releases the GIL around the kernel.
#include "bindings.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

// An optional float64 array of bin edges: None, or a numpy float64 array (copied only if strided) whose
// values are non-decreasing and not NaN along its last axis (the kernel binary-searches them).
py::array_t<double> edges_array(const py::object& obj, const char* name) {
    return py::array_t<double, py::array::c_style>::ensure(exact_dtype_array<double>(obj, name));
}

void check_edges(const double* e, int64_t rows, int64_t n, const char* name) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < n; ++j) {
            const double v = e[r * n + j];
            if (v != v) throw py::value_error(std::string(name) + " must not contain NaN");
            if (j > 0 && !(e[r * n + j - 1] <= v))
                throw py::value_error(std::string(name) + " must be non-decreasing, got " +
                                      std::to_string(e[r * n + j - 1]) + " before " + std::to_string(v));
        }
}

// Class-wise bins: 0 <= n_bins <= kMaxBins and K * n_bins <= kMaxClasswiseBins, checked before anything
// is allocated from them.
void check_classwise_size(int64_t K, int64_t n_bins, const char* name) {
    check_size(n_bins, name, 0, kMaxBins);
    if (n_bins > 0 && K > kMaxClasswiseBins / n_bins)
        throw py::value_error("n_classes * " + std::string(name) + " must be <= " + std::to_string(kMaxClasswiseBins) +
                              ", got " + std::to_string(K) + " * " + std::to_string(n_bins));
}

// The class-wise spec of a call: off when n_bins == 0; equal-width, or explicit per-class edges (K, M + 1).
ClasswiseSpec classwise_spec(int64_t K, int64_t n_bins, const py::object& class_edges, py::array_t<double>& keep) {
    if (n_bins == 0) {
        if (!class_edges.is_none()) throw py::value_error("class_edges needs classwise_bins >= 1");
        return ClasswiseSpec();
    }
    const double* edge_values = nullptr;
    if (!class_edges.is_none()) {
        keep = edges_array(class_edges, "class_edges");
        if (keep.ndim() != 2 || keep.shape(0) != K || keep.shape(1) != n_bins + 1)
            throw py::value_error("class_edges must have shape (K, n_bins + 1) = (" + std::to_string(K) + ", " +
                                  std::to_string(n_bins + 1) + "), got a " + ndim_text(keep));
        edge_values = keep.data();
        check_edges(edge_values, K, n_bins + 1, "class_edges");
    }
    return ClasswiseSpec(K, n_bins, edge_values);
}

void check_inverse_temperature(double inv_t, bool from_logits) {
    if (!(inv_t > 0.0) || !std::isfinite(inv_t))
        throw py::value_error("inverse_temperature must be a finite number > 0");
    if (!from_logits && inv_t != 1.0) throw py::value_error("inverse_temperature applies to logits only");
}

void check_nll_eps(double eps) {
    if (!(eps >= 0.0 && eps < 0.5)) throw py::value_error("nll_eps must be in [0, 0.5), got " + std::to_string(eps));
}

py::dict top_label_stats_py(const py::object& scores_obj, const py::object& labels_obj,
                            const py::object& sample_weight, bool from_logits, int64_t n_bins, double nll_eps,
                            bool with_nll, const py::object& conf_out, const py::object& correct_out,
                            double inverse_temperature, int64_t classwise_bins, const py::object& class_edges,
                            bool with_brier) {
    check_size(n_bins, "n_bins", 0, kMaxBins);
    check_size(classwise_bins, "classwise_bins", 0, kMaxBins);
    check_nll_eps(nll_eps);
    check_inverse_temperature(inverse_temperature, from_logits);
    const py::array scores = require_array(scores_obj, "scores");
    const py::array labels = require_array(labels_obj, "labels");
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        check_classwise_size(s.cols, classwise_bins, "classwise_bins");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Weights w = weights(sample_weight, s.rows);
        py::array_t<double> edges_keep;
        const ClasswiseSpec cw = classwise_spec(s.cols, classwise_bins, class_edges, edges_keep);
        double* conf = conf_out.is_none() ? nullptr : output_array<double>(conf_out, "conf_out", {s.rows});
        uint8_t* correct =
            correct_out.is_none() ? nullptr : output_array<uint8_t>(correct_out, "correct_out", {s.rows});
        BinningResult r;
        {
            py::gil_scoped_release release;
            r = top_label_stats<T>(s, y, w, from_logits, n_bins, nll_eps, with_nll, conf, correct,
                                   inverse_temperature, cw, with_brier);
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
                            int64_t n_bins, const py::object& edges, double nll_eps, bool with_nll) {
    return dispatch_float(probs, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        require_ndim(probs, "scores", 1);
        const Vector<T> p = vector<T>(probs, "scores", probs.shape(0));
        const Vector<L> y = vector<L>(targets, "labels", p.size);
        const Weights w = weights(sample_weight, p.size);
        const double* edge_values = nullptr;
        py::array_t<double> e;
        if (!edges.is_none()) {
            e = edges_array(edges, "edges");
            if (e.ndim() != 1 || e.shape(0) != n_bins + 1)
                throw py::value_error("edges must be a 1-D array of length n_bins + 1 = " + std::to_string(n_bins + 1));
            edge_values = e.data();
            check_edges(edge_values, 1, n_bins + 1, "edges");
        }
        BinningResult r;
        {
            py::gil_scoped_release release;
            r = binary_stats<T, L>(p, y, w, n_bins, edge_values, nll_eps, with_nll);
        }
        py::dict d = bin_dict(r.bins);
        d["totals"] = totals_dict(r.totals);
        d["status"] = status_tuple(r.status);
        return d;
    });
}

py::dict binary_stats_py(const py::object& probs_obj, const py::object& targets_obj, const py::object& sample_weight,
                         int64_t n_bins, const py::object& edges, double nll_eps, bool with_nll) {
    check_size(n_bins, "n_bins", 0, kMaxBins);
    check_nll_eps(nll_eps);
    const py::array probs = require_array(probs_obj, "scores");
    const py::array targets = require_array(targets_obj, "labels");
    if (is_dtype<int64_t>(targets))
        return binary_stats_typed<int64_t>(probs, targets, sample_weight, n_bins, edges, nll_eps, with_nll);
    if (is_dtype<uint8_t>(targets))
        return binary_stats_typed<uint8_t>(probs, targets, sample_weight, n_bins, edges, nll_eps, with_nll);
    throw py::type_error("labels must have dtype int64 or uint8, got " + dtype_name(targets));
}

// Class-wise bins alone: the fused pass of top_label_stats without top-label bins (nor its Brier term: the
// totals are not returned).
py::dict classwise_stats_py(const py::object& scores, const py::object& labels, const py::object& sample_weight,
                            bool from_logits, int64_t n_bins, const py::object& class_edges) {
    check_size(n_bins, "n_bins", 1, kMaxBins);
    py::dict r = top_label_stats_py(scores, labels, sample_weight, from_logits, 0, 0.0, false, py::none(), py::none(),
                                    1.0, n_bins, class_edges, false);
    py::dict d = r["classwise"].cast<py::dict>();
    d["status"] = r["status"];
    return d;
}

}  // namespace

void bind_binning(py::module_& m) {
    m.def("top_label_stats", &top_label_stats_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("from_logits").noconvert(), py::arg("n_bins"), py::arg("nll_eps"),
          py::arg("with_nll").noconvert() = true,
          py::arg("conf_out") = py::none(), py::arg("correct_out") = py::none(),
          py::arg("inverse_temperature") = 1.0, py::arg("classwise_bins") = 0, py::arg("class_edges") = py::none(),
          py::arg("with_brier").noconvert() = true);
    m.def("binary_stats", &binary_stats_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("n_bins"), py::arg("edges"), py::arg("nll_eps"), py::arg("with_nll").noconvert() = true);
    m.def("classwise_stats", &classwise_stats_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("from_logits").noconvert(), py::arg("n_bins"), py::arg("class_edges"));
}
