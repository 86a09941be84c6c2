// Bindings of pav.hpp: isotonic regression, and the one-vs-rest calibration maps of
// IsotonicCalibration / HistogramBinning (fit of K columns, application to a block).
// Each function checks its buffers and releases the GIL around the kernel.
#include "bindings.hpp"
#include "calibkit/pav.hpp"

namespace py = pybind11;
using namespace calibkit;
using namespace calibkit::bind;

namespace {

// Every value finite (and, for weights, > 0): PAV on NaN or on zero total weight gives NaN blocks.
void check_finite(const Vector<double>& v, const char* name, bool positive) {
    for (int64_t i = 0; i < v.size; ++i) {
        const double value = v[i];
        if (!is_finite(value) || (positive && !(value > 0.0)))
            throw py::value_error(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(value) +
                                  (positive ? " is not a finite number > 0" : " is not finite"));
    }
}

py::dict isotonic_fit_py(const py::object& y_obj, const py::object& x, const py::object& sample_weight,
                         bool increasing) {
    const Vector<double> yv = typed_vector<double>(require_array(y_obj, "y"), "y");
    const int64_t n = yv.size;
    const Vector<double> xv = optional_vector<double>(x, "x", n);
    const Vector<double> wv = optional_vector<double>(sample_weight, "sample_weight", n);
    check_finite(yv, "y", false);
    if (xv.data) check_finite(xv, "x", false);
    if (wv.data) check_finite(wv, "sample_weight", true);
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

// Scores of shape (N,) (one column) or (N, K), read in place.
template <class T>
Matrix<T> columns(const py::array& a, const char* name) {
    if (a.ndim() == 2) return matrix<T>(a, name);
    const Vector<T> v = vector<T>(a, name, a.ndim() == 1 ? static_cast<int64_t>(a.shape(0)) : -1);
    return Matrix<T>{v.data, v.size, 1, v.stride, static_cast<int64_t>(sizeof(T))};
}

void check_mode(int value, const char* name, int hi) {
    if (value < 0 || value > hi)
        throw py::value_error(std::string(name) + " must be in [0, " + std::to_string(hi) + "], got " +
                              std::to_string(value));
}

py::dict isotonic_fit_columns_py(const py::object& scores_obj, const py::object& labels_obj,
                                 const py::object& sample_weight, int64_t first_class, int check) {
    const py::array scores = require_array(scores_obj, "scores");
    const py::array labels = require_array(labels_obj, "labels");
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    check_mode(check, "check", 2);
    if (scores.ndim() != 1 && scores.ndim() != 2)
        throw py::value_error("scores must have shape (N,) or (N, K), got " + ndim_text(scores));
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = columns<T>(scores, "scores");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Vector<double> w = optional_vector<double>(sample_weight, "sample_weight", s.rows);
        Status status;
        ColumnModels models;
        {
            py::gil_scoped_release release;
            status = check_columns(s, check);
            if (status.code == kOk) models = isotonic_columns(s, y, w, first_class);
        }
        py::dict d;
        d["x"] = to_array(models.x);
        d["x_offsets"] = to_array(models.x_off);
        d["y"] = to_array(models.y);
        d["y_offsets"] = to_array(models.y_off);
        d["status"] = status_tuple(status);
        return d;
    });
}

// Offsets of K concatenated models into an array of length `size`: K + 1 int64, from 0 to size, non-decreasing.
const int64_t* model_offsets(const py::object& obj, const char* name, int64_t K, int64_t size) {
    const py::array a = require_array(obj, name);
    require_dtype(is_dtype<int64_t>(a), a, name, "int64");
    const Vector<int64_t> v = vector<int64_t>(a, name, K + 1);
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    const int64_t* o = static_cast<const int64_t*>(a.data());
    if (o[0] != 0 || o[K] != size)
        throw py::value_error(std::string(name) + " must run from 0 to " + std::to_string(size) + ", got " +
                              std::to_string(o[0]) + " to " + std::to_string(o[K]));
    for (int64_t k = 0; k < K; ++k)
        if (o[k + 1] < o[k])
            throw py::value_error(std::string(name) + " must be non-decreasing (" + name + "[" +
                                  std::to_string(k + 1) + "] < " + name + "[" + std::to_string(k) + "])");
    (void)v;
    return o;
}

const double* knot_values(const py::object& obj, const char* name) {
    const py::array a = require_array(obj, name);
    typed_vector<double>(a, name);
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    return static_cast<const double*>(a.data());
}

// The K models (x, x_offsets, y, y_offsets) checked as step_apply takes them, prepared as StepTables.
StepTables checked_tables(const py::object& x_obj, const py::object& x_offsets, const py::object& y_obj,
                          const py::object& y_offsets, int mode, int64_t K) {
    const double* x = knot_values(x_obj, "x");
    const double* y = knot_values(y_obj, "y");
    const int64_t* xo = model_offsets(x_offsets, "x_offsets", K, static_cast<int64_t>(py::len(x_obj)));
    const int64_t* yo = model_offsets(y_offsets, "y_offsets", K, static_cast<int64_t>(py::len(y_obj)));
    for (int64_t k = 0; k < K; ++k) {
        const int64_t mx = xo[k + 1] - xo[k], my = yo[k + 1] - yo[k];
        const bool ok = mode == kStepInterp ? (mx >= 1 && my == mx) : my == mx + 1;
        if (!ok)
            throw py::value_error("model " + std::to_string(k) + " has " + std::to_string(mx) + " x and " +
                                  std::to_string(my) + " y values; mode " + std::to_string(mode) + " needs " +
                                  (mode == kStepInterp ? "as many y as x (at least 1)" : "one y more than x"));
        for (int64_t j = xo[k] + 1; j < xo[k + 1]; ++j)
            if (!(x[j] >= x[j - 1]))
                throw py::value_error("x[" + std::to_string(j) + "] is below x[" + std::to_string(j - 1) +
                                      "]: the knots of each model must be sorted");
    }
    py::gil_scoped_release release;
    return step_tables(x, xo, y, yo, K, mode);
}

bool meets_scores(const py::array& scores, const char* o_lo, const char* o_hi);

// The checked output of step_apply for scores (N,) or (N, K): C-ordered float64 of their shape, `scores`
// itself or memory separate from it.
double* checked_out(const py::array& scores, const py::object& out_obj, bool renormalise) {
    const int64_t N = static_cast<int64_t>(scores.shape(0));
    const int64_t K = scores.ndim() == 2 ? static_cast<int64_t>(scores.shape(1)) : 1;
    if (renormalise && scores.ndim() != 2) throw py::value_error("renormalise needs scores of shape (N, K)");
    double* out = scores.ndim() == 2 ? output_array<double>(out_obj, "out", {N, K})
                                     : output_array<double>(out_obj, "out", {N});
    const char* o_lo = reinterpret_cast<const char*>(out);
    if (N > 0 && meets_scores(scores, o_lo, o_lo + N * K * static_cast<int64_t>(sizeof(double)))) {
        const bool same = static_cast<const void*>(out) == scores.data() && is_dtype<double>(scores) &&
                          (scores.flags() & py::array::c_style);
        if (!same) throw py::value_error("out overlaps scores: it must be scores itself or separate memory");
    }
    return out;
}

// Whether the bytes [o_lo, o_hi) meet those spanned by the elements of scores.
bool meets_scores(const py::array& scores, const char* o_lo, const char* o_hi) {
    const char* s_lo = static_cast<const char*>(scores.data());
    py::ssize_t s_lo_off = 0, s_hi_off = 0;
    for (py::ssize_t d = 0; d < scores.ndim(); ++d) {
        const py::ssize_t span = (scores.shape(d) - 1) * scores.strides(d);
        if (scores.shape(d) == 0) { s_lo_off = s_hi_off = 0; break; }
        if (span < 0) s_lo_off += span; else s_hi_off += span;
    }
    const char* a_lo = s_lo + s_lo_off;
    const char* a_hi = s_lo + s_hi_off + scores.itemsize();
    return a_lo < o_hi && o_lo < a_hi;
}

py::array checked_scores(const py::object& scores_obj) {
    const py::array scores = require_array(scores_obj, "scores");
    if (scores.ndim() != 1 && scores.ndim() != 2)
        throw py::value_error("scores must have shape (N,) or (N, K), got " + ndim_text(scores));
    return scores;
}

// With softmax the scores are (N, K) logits, checked finite or not at all.
void check_softmax(const py::array& scores, int check, bool softmax) {
    if (!softmax) return;
    if (scores.ndim() != 2) throw py::value_error("softmax needs logits of shape (N, K), got " + ndim_text(scores));
    if (check == kCheckProbability) throw py::value_error("check = 2 (probabilities) does not apply to logits");
}

py::tuple apply_tables(const py::array& scores, const StepTables& tables, int check, bool renormalise, double* out,
                       bool softmax) {
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = columns<T>(scores, "scores");
        Status st;
        {
            py::gil_scoped_release release;
            st = apply_columns(s, tables, check, renormalise, out, softmax);
        }
        return status_tuple(st);
    });
}

py::tuple step_apply_py(const py::object& scores_obj, const py::object& x_obj, const py::object& x_offsets,
                        const py::object& y_obj, const py::object& y_offsets, int mode, int check, bool renormalise,
                        const py::object& out_obj, bool softmax) {
    const py::array scores = require_array(scores_obj, "scores");
    check_mode(mode, "mode", 1);
    check_mode(check, "check", 2);
    checked_scores(scores);
    check_softmax(scores, check, softmax);
    const int64_t K = scores.ndim() == 2 ? static_cast<int64_t>(scores.shape(1)) : 1;
    const StepTables tables = checked_tables(x_obj, x_offsets, y_obj, y_offsets, mode, K);
    double* out = checked_out(scores, out_obj, renormalise);
    return apply_tables(scores, tables, check, renormalise, out, softmax);
}

std::shared_ptr<StepTables> step_tables_py(const py::object& x_obj, const py::object& x_offsets,
                                           const py::object& y_obj, const py::object& y_offsets, int mode) {
    check_mode(mode, "mode", 1);
    const py::array offsets = require_array(x_offsets, "x_offsets");
    if (offsets.ndim() != 1 || offsets.shape(0) < 2)
        throw py::value_error("x_offsets must be a 1-D array of K + 1 >= 2 offsets, got shape " +
                              std::string(py::str(py::getattr(offsets, "shape"))));
    const int64_t K = static_cast<int64_t>(offsets.shape(0)) - 1;
    return std::make_shared<StepTables>(checked_tables(x_obj, x_offsets, y_obj, y_offsets, mode, K));
}

py::tuple step_apply_tables_py(const py::object& scores_obj, const std::shared_ptr<StepTables>& tables, int check,
                               bool renormalise, const py::object& out_obj, bool softmax) {
    const py::array scores = checked_scores(scores_obj);
    check_mode(check, "check", 2);
    check_softmax(scores, check, softmax);
    if (!tables) throw py::type_error("tables must be StepTables, got None");
    const int64_t K = scores.ndim() == 2 ? static_cast<int64_t>(scores.shape(1)) : 1;
    if (K != tables->K)
        throw py::value_error("scores have " + std::to_string(K) + " columns but the tables hold " +
                              std::to_string(tables->K) + " models");
    double* out = checked_out(scores, out_obj, renormalise);
    return apply_tables(scores, *tables, check, renormalise, out, softmax);
}

// step_apply_tables for several sets of models at once, set j into out[j]: one pass over the scores (with
// softmax, each chunk's softmax computed once for all sets). out is a C-ordered float64 (n_sets, N, K) array
// (K = 1 for scores (N,)), separate from the scores.
constexpr int64_t kMaxSets = 16;

py::tuple step_apply_many_py(const py::object& scores_obj, const py::sequence& tables_seq, int check,
                             bool renormalise, const py::object& out_obj, bool softmax) {
    const py::array scores = checked_scores(scores_obj);
    check_mode(check, "check", 2);
    check_softmax(scores, check, softmax);
    if (renormalise && scores.ndim() != 2) throw py::value_error("renormalise needs scores of shape (N, K)");
    const int64_t n_sets = static_cast<int64_t>(py::len(tables_seq));
    if (n_sets < 1 || n_sets > kMaxSets)
        throw py::value_error("tables must hold 1 to " + std::to_string(kMaxSets) + " StepTables, got " +
                              std::to_string(n_sets));
    const int64_t N = static_cast<int64_t>(scores.shape(0));
    const int64_t K = scores.ndim() == 2 ? static_cast<int64_t>(scores.shape(1)) : 1;
    std::vector<std::shared_ptr<StepTables>> held(static_cast<size_t>(n_sets));  // alive for the call
    std::vector<const StepTables*> sets(static_cast<size_t>(n_sets));
    for (int64_t j = 0; j < n_sets; ++j) {
        const py::object item = tables_seq[static_cast<size_t>(j)];
        if (!py::isinstance<StepTables>(item))
            throw py::type_error("tables[" + std::to_string(j) + "] must be StepTables, got " +
                                 std::string(py::str(py::type::of(item).attr("__name__"))));
        held[static_cast<size_t>(j)] = item.cast<std::shared_ptr<StepTables>>();
        if (held[static_cast<size_t>(j)]->K != K)
            throw py::value_error("scores have " + std::to_string(K) + " columns but tables[" + std::to_string(j) +
                                  "] holds " + std::to_string(held[static_cast<size_t>(j)]->K) + " models");
        sets[static_cast<size_t>(j)] = held[static_cast<size_t>(j)].get();
    }
    double* out = output_array<double>(out_obj, "out", {n_sets, N, K});
    const char* o_lo = reinterpret_cast<const char*>(out);
    if (N > 0 && meets_scores(scores, o_lo, o_lo + n_sets * N * K * static_cast<int64_t>(sizeof(double))))
        throw py::value_error("out overlaps scores: it must be separate memory");
    std::vector<double*> outs(static_cast<size_t>(n_sets));
    for (int64_t j = 0; j < n_sets; ++j) outs[static_cast<size_t>(j)] = out + j * N * K;
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = columns<T>(scores, "scores");
        Status st;
        {
            py::gil_scoped_release release;
            st = apply_columns(s, sets.data(), outs.data(), n_sets, check, renormalise, softmax);
        }
        return status_tuple(st);
    });
}

py::tuple softmax_into_py(const py::object& scores_obj, const py::object& out_obj) {
    const py::array scores = checked_scores(scores_obj);
    check_softmax(scores, kCheckFinite, true);
    double* out = checked_out(scores, out_obj, false);
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> z = columns<T>(scores, "scores");
        Status st;
        {
            py::gil_scoped_release release;
            st = softmax_rows(z, out);
        }
        return status_tuple(st);
    });
}

py::dict histogram_fit_columns_py(const py::object& scores_obj, const py::object& labels_obj,
                                  const py::object& sample_weight, const py::object& edges_obj, int64_t first_class) {
    const py::array scores = checked_scores(scores_obj);
    const py::array labels = require_array(labels_obj, "labels");
    require_dtype(is_dtype<int64_t>(labels), labels, "labels", "int64");
    const int64_t K = scores.ndim() == 2 ? static_cast<int64_t>(scores.shape(1)) : 1;
    const py::array edges = require_array(edges_obj, "edges");
    require_dtype(is_dtype<double>(edges), edges, "edges", "float64");
    if (edges.ndim() != 2 || edges.shape(0) != K || edges.shape(1) < 2 || !(edges.flags() & py::array::c_style))
        throw py::value_error("edges must be a C-contiguous (K, n_bins + 1) float64 array with K = " +
                              std::to_string(K) + " and n_bins >= 1, got shape " +
                              std::string(py::str(py::getattr(edges, "shape"))));
    const int64_t n_bins = static_cast<int64_t>(edges.shape(1)) - 1;
    if (K * n_bins > (int64_t{1} << 26))
        throw py::value_error("K * n_bins = " + std::to_string(K * n_bins) + " is above 2**26");
    const double* e = static_cast<const double*>(edges.data());
    for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 1; j <= n_bins; ++j)
            if (!(e[k * (n_bins + 1) + j] >= e[k * (n_bins + 1) + j - 1]))
                throw py::value_error("edges[" + std::to_string(k) + ", " + std::to_string(j) + "] is below edges[" +
                                      std::to_string(k) + ", " + std::to_string(j - 1) + "]: edges must be sorted");
    return dispatch_float(scores, "scores", [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        const Matrix<T> s = columns<T>(scores, "scores");
        const Vector<int64_t> y = vector<int64_t>(labels, "labels", s.rows);
        const Vector<double> w = optional_vector<double>(sample_weight, "sample_weight", s.rows);
        HistogramSums sums;
        {
            py::gil_scoped_release release;
            sums = histogram_columns(s, y, w, e, n_bins, first_class);
        }
        py::array_t<double> weight({K, n_bins}), hits({K, n_bins});
        std::copy(sums.weight.begin(), sums.weight.end(), weight.mutable_data());
        std::copy(sums.hits.begin(), sums.hits.end(), hits.mutable_data());
        py::dict d;
        d["weight"] = weight;
        d["hits"] = hits;
        return d;
    });
}

}  // namespace

void bind_isotonic(py::module_& m) {
    m.def("isotonic_fit", &isotonic_fit_py, py::arg("y"), py::arg("x"), py::arg("sample_weight"),
          py::arg("increasing").noconvert());
    m.def("isotonic_fit_columns", &isotonic_fit_columns_py, py::arg("scores"), py::arg("labels"),
          py::arg("sample_weight"), py::arg("first_class"), py::arg("check"));
    m.def("step_apply", &step_apply_py, py::arg("scores"), py::arg("x"), py::arg("x_offsets"), py::arg("y"),
          py::arg("y_offsets"), py::arg("mode"), py::arg("check"), py::arg("renormalise").noconvert(),
          py::arg("out"), py::arg("softmax").noconvert() = false);
    py::class_<StepTables, std::shared_ptr<StepTables>>(
        m, "StepTables", "The K step functions of step_apply (same arguments, same checks), prepared once.")
        .def(py::init(&step_tables_py), py::arg("x"), py::arg("x_offsets"), py::arg("y"), py::arg("y_offsets"),
             py::arg("mode"))
        .def_property_readonly("n_models", [](const StepTables& t) { return t.K; })
        .def_property_readonly("mode", [](const StepTables& t) { return t.mode; });
    m.def("step_apply_tables", &step_apply_tables_py, py::arg("scores"), py::arg("tables"), py::arg("check"),
          py::arg("renormalise").noconvert(), py::arg("out"), py::arg("softmax").noconvert() = false);
    m.def("step_apply_many", &step_apply_many_py, py::arg("scores"), py::arg("tables"), py::arg("check"),
          py::arg("renormalise").noconvert(), py::arg("out"), py::arg("softmax").noconvert() = false,
          "step_apply_tables for a sequence of StepTables in one pass, tables[j] into out[j] (out: C-ordered "
          "float64 (len(tables), N, K), separate from the scores): with softmax, each chunk's softmax is computed "
          "once for all of them.");
    m.def("softmax_into", &softmax_into_py, py::arg("scores"), py::arg("out"),
          "The row softmax of (N, K) logits into the C-ordered float64 (N, K) out (which may be the scores "
          "themselves); returns the status of the first logit that is not finite.");
    m.def("histogram_fit_columns", &histogram_fit_columns_py, py::arg("scores"), py::arg("labels"),
          py::arg("sample_weight"), py::arg("edges"), py::arg("first_class"));
}
