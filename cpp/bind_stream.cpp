// Bindings of stream.hpp: accumulate rows into caller-owned state arrays, GIL released.
#include "bindings.hpp"
#include "calibkit/stream.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

template <class L>
py::tuple accumulate_typed(const py::array& confidence, const py::array& target, const py::object& sample_weight,
                           uint64_t offset, int64_t n_bins, int64_t fine_bits, int64_t fine_levels, int64_t n_boot,
                           uint64_t seed, const py::object& bins, const py::object& fine, const py::object& boot,
                           const py::object& squares) {
    return dispatch_float(confidence, "confidence", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        require_ndim(confidence, "confidence", 1);
        const Vector<T> c = vector<T>(confidence, "confidence", confidence.shape(0));
        const Vector<L> t = vector<L>(target, "target", c.size);
        const Weights w = weights(sample_weight, c.size);
        double* b = output_array<double>(bins, "bins", {4, n_bins});
        const FineGrid grid{fine_bits, fine_levels};
        double* f = output_array<double>(fine, "fine", {5, grid.size()});
        double* r = output_array<double>(boot, "boot", {n_boot, 3, n_bins});
        double* q = squares.is_none() ? nullptr : output_array<double>(squares, "squares", {2, n_bins});
        Status st;
        {
            py::gil_scoped_release release;
            st = stream_accumulate<T, L>(c, t, w, offset, n_bins, grid, n_boot, seed, b, f, r, q);
        }
        return status_tuple(st);
    });
}

py::tuple stream_accumulate_py(const py::object& confidence_obj, const py::object& target_obj,
                               const py::object& sample_weight,
                               uint64_t offset, int64_t n_bins, int64_t fine_bits, int64_t fine_levels, int64_t n_boot,
                               uint64_t seed, const py::object& bins, const py::object& fine, const py::object& boot,
                               const py::object& squares) {
    check_size(n_bins, "n_bins", 1, kMaxBins);
    check_size(fine_bits, "fine_bits", 0, kMaxFineBits);
    check_size(fine_levels, "fine_levels", 1, kMaxFineLevels);
    check_size(n_boot, "n_boot", 0, kMaxBootstrap);
    const py::array confidence = require_array(confidence_obj, "confidence");
    const py::array target = require_array(target_obj, "target");
    if (is_dtype<int64_t>(target))
        return accumulate_typed<int64_t>(confidence, target, sample_weight, offset, n_bins, fine_bits, fine_levels,
                                         n_boot, seed, bins, fine, boot, squares);
    if (is_dtype<uint8_t>(target))
        return accumulate_typed<uint8_t>(confidence, target, sample_weight, offset, n_bins, fine_bits, fine_levels,
                                         n_boot, seed, bins, fine, boot, squares);
    throw py::type_error("target must have dtype int64 or uint8, got " + dtype_name(target));
}

// The fused update of a top-label stream (stream_top_label): one binding call per batch, nothing
// allocated on the Python side, the status tuple as the only result.
py::tuple stream_top_label_py(const py::object& scores_obj, const py::object& labels_obj,
                              const py::object& sample_weight, bool from_logits, double nll_eps,
                              double inverse_temperature, uint64_t offset, int64_t n_bins, int64_t fine_bits,
                              int64_t fine_levels, int64_t n_boot, uint64_t seed, const py::object& bins,
                              const py::object& fine, const py::object& boot, const py::object& totals,
                              int64_t classwise_bins, const py::object& classwise, const py::object& squares,
                              const py::object& smooth_grid_sizes, const py::object& smooth) {
    check_size(n_bins, "n_bins", 1, kMaxBins);
    check_size(fine_bits, "fine_bits", 0, kMaxFineBits);
    check_size(fine_levels, "fine_levels", 1, kMaxFineLevels);
    check_size(n_boot, "n_boot", 0, kMaxBootstrap);
    check_size(classwise_bins, "classwise_bins", 0, kMaxBins);
    if (!(nll_eps >= 0.0 && nll_eps < 0.5)) throw py::value_error("nll_eps must be in [0, 0.5), got " + std::to_string(nll_eps));
    if (!(inverse_temperature > 0.0) || !std::isfinite(inverse_temperature))
        throw py::value_error("inverse_temperature must be a finite number > 0");
    if (!from_logits && inverse_temperature != 1.0) throw py::value_error("inverse_temperature applies to logits only");
    // The smooth ECE's grids (smooth.hpp's bounds, checked before anything is allocated from them) and their
    // (cells, 2) state, both given or both None.
    std::vector<int64_t> sizes;
    if (smooth_grid_sizes.is_none() != smooth.is_none())
        throw py::value_error("smooth_grid_sizes and smooth must be given together");
    if (!smooth_grid_sizes.is_none())
        sizes = checked_grid_sizes(smooth_grid_sizes, "smooth_grid_sizes", kMaxSmoothGrids, kMaxSmoothCells);
    const py::array scores = require_array(scores_obj, "scores");
    const py::array labels = require_array(labels_obj, "labels");
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = matrix<T>(scores, "scores");
        if (s.cols < 1) throw py::value_error("scores must have at least one column");
        if (classwise_bins > 0 && s.cols > kMaxClasswiseBins / classwise_bins)
            throw py::value_error("n_classes * classwise_bins must be <= " + std::to_string(kMaxClasswiseBins) +
                                  ", got " + std::to_string(s.cols) + " * " + std::to_string(classwise_bins));
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Weights w = weights(sample_weight, s.rows);
        double* b = output_array<double>(bins, "bins", {4, n_bins});
        const FineGrid grid{fine_bits, fine_levels};
        double* f = output_array<double>(fine, "fine", {5, grid.size()});
        double* r = output_array<double>(boot, "boot", {n_boot, 3, n_bins});
        double* t = output_array<double>(totals, "totals", {6});
        double* q = squares.is_none() ? nullptr : output_array<double>(squares, "squares", {2, n_bins});
        double* cws = nullptr;
        ClasswiseSpec cw;
        if (classwise_bins > 0) {
            cws = output_array<double>(classwise, "classwise", {3, s.cols, classwise_bins});
            cw = ClasswiseSpec(s.cols, classwise_bins, nullptr);
        } else if (!classwise.is_none()) {
            throw py::value_error("classwise needs classwise_bins >= 1");
        }
        const SmoothGrids grids(sizes);
        double* sm = sizes.empty() ? nullptr : output_array<double>(smooth, "smooth", {grids.cells, 2});
        Status st;
        {
            py::gil_scoped_release release;
            SmoothSums sums(sizes.empty() ? 0 : grids.cells, 2);
            const SmoothTarget target{sizes.empty() ? nullptr : &grids, &sums};
            st = stream_top_label<T>(s, y, w, from_logits, nll_eps, inverse_temperature, cw, offset, n_bins, grid,
                                     n_boot, seed, b, f, r, t, cws, q, target);
            if (st.code == kOk && sm)
                for (size_t j = 0; j < sums.cells.size(); ++j) sm[j] += sums.cells[j];
        }
        return status_tuple(st);
    });
}

}  // namespace

void bind_stream(py::module_& m) {
    m.def("stream_accumulate", &stream_accumulate_py, py::arg("confidence"), py::arg("target"),
          py::arg("sample_weight"), py::arg("offset"), py::arg("n_bins"), py::arg("fine_bits"), py::arg("fine_levels"),
          py::arg("n_boot"), py::arg("seed"), py::arg("bins"), py::arg("fine"), py::arg("boot"),
          py::arg("squares") = py::none());
    m.def("stream_top_label", &stream_top_label_py, py::arg("scores"), py::arg("labels"), py::arg("sample_weight"),
          py::arg("from_logits").noconvert(), py::arg("nll_eps"), py::arg("inverse_temperature"), py::arg("offset"),
          py::arg("n_bins"), py::arg("fine_bits"), py::arg("fine_levels"), py::arg("n_boot"), py::arg("seed"),
          py::arg("bins"), py::arg("fine"), py::arg("boot"), py::arg("totals"), py::arg("classwise_bins"),
          py::arg("classwise"), py::arg("squares") = py::none(), py::arg("smooth_grid_sizes") = py::none(),
          py::arg("smooth") = py::none());
}
