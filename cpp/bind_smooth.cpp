// Bindings of smooth.hpp (the grid sums of the smooth ECE). The GIL is released around the kernel.
#include "bindings.hpp"
#include "calibkit/smooth.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

py::dict smooth_dict(const SmoothSums& r) {
    py::array_t<double> cells({static_cast<py::ssize_t>(r.cells.size() / r.channels), static_cast<py::ssize_t>(r.channels)});
    std::copy(r.cells.begin(), r.cells.end(), cells.mutable_data());
    py::dict d;
    d["grid"] = cells;
    d["count"] = r.count;
    d["weight"] = r.weight;
    d["status"] = status_tuple(r.status);
    return d;
}

template <class L>
py::dict smooth_binary(const py::array& scores, const py::array& labels, const py::object& sample_weight,
                       const SmoothGrids& grids, int64_t channels) {
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Vector<T> p = vector<T>(scores, "scores", scores.shape(0));
        const Vector<L> y = vector<L>(labels, "labels", p.size);
        const Weights w = weights(sample_weight, p.size);
        SmoothSums r;
        {
            py::gil_scoped_release release;
            r = smooth_grid_binary<T, L>(p, y, w, grids, channels);
        }
        return smooth_dict(r);
    });
}

py::dict smooth_grid_py(const py::object& scores_obj, const py::object& labels_obj, const py::object& sample_weight,
                        bool from_logits, const py::object& grid_sizes_obj, bool with_labels, double inv_t) {
    if (!(inv_t > 0.0) || !std::isfinite(inv_t))
        throw py::value_error("inverse_temperature must be a finite number > 0");
    if (!from_logits && inv_t != 1.0) throw py::value_error("inverse_temperature applies to logits only");
    const SmoothGrids grids(checked_grid_sizes(grid_sizes_obj, "grid_sizes", kMaxSmoothGrids, kMaxSmoothCells));
    const int64_t channels = with_labels ? 3 : 2;
    const py::array scores = require_array(scores_obj, "scores");
    const py::array labels = require_array(labels_obj, "labels");
    if (scores.ndim() == 1) {
        if (from_logits) throw py::value_error("from_logits applies to (N, K) scores; give (N,) probabilities");
        if (is_dtype<uint8_t>(labels)) return smooth_binary<uint8_t>(scores, labels, sample_weight, grids, channels);
        require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64 or uint8");
        return smooth_binary<int64_t>(scores, labels, sample_weight, grids, channels);
    }
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Weights w = weights(sample_weight, s.rows);
        SmoothSums r;
        {
            py::gil_scoped_release release;
            r = smooth_grid_top_label<T>(s, y, w, from_logits, grids, channels, inv_t);
        }
        return smooth_dict(r);
    });
}

}  // namespace

void bind_smooth(py::module_& m) {
    m.def("smooth_grid", &smooth_grid_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("from_logits").noconvert(), py::arg("grid_sizes"), py::arg("with_labels").noconvert() = false,
          py::arg("inverse_temperature") = 1.0,
          "Grid sums of the smooth ECE: (sum(grid_sizes), 2) array of [weight, weighted residual] per grid "
          "point (3 columns with_labels: and the weighted label), the row count, the total weight and the status of the first bad row.");
}
