// Deterministic parallel execution for calibkit kernels.
//
// Work is cut into fixed-size chunks whose size depends only on the problem
// (never on the thread count). Each chunk produces its own partial result and
// partials are combined strictly in chunk order, so every result is
// bit-for-bit identical for any number of threads.
//
// A persistent pool avoids paying thread start-up on every call (streaming
// updates call kernels many times on small batches). If the pool is busy
// (another Python thread is inside a kernel), the caller runs its tasks itself:
// still correct and deterministic, never a deadlock.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace calibkit {

inline int hardware_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
}

inline std::atomic<int>& num_threads_setting() {
    static std::atomic<int> n{hardware_threads()};
    return n;
}

inline int get_num_threads() { return num_threads_setting().load(); }

inline void set_num_threads(int n) { num_threads_setting().store(n < 1 ? 1 : n); }

class ThreadPool {
public:
    static ThreadPool& instance() {
        // Leaked on purpose: joining threads during interpreter shutdown is unsafe.
        static ThreadPool* pool = new ThreadPool();
        return *pool;
    }

    // Runs task(i) for i in [0, n_tasks) on up to n_threads threads (the caller
    // included) and returns when all are done.
    void run(int64_t n_tasks, int n_threads, const std::function<void(int64_t)>& task) {
        if (n_tasks <= 0) return;
        n_threads = static_cast<int>(std::min<int64_t>(n_threads, n_tasks));
        std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
        if (n_threads <= 1 || !busy.owns_lock()) {
            for (int64_t i = 0; i < n_tasks; ++i) task(i);
            return;
        }
        ensure_workers(n_threads - 1);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            task_ = &task;
            n_tasks_ = n_tasks;
            next_.store(0);
            active_workers_ = n_threads - 1;
            pending_workers_ = n_threads - 1;
            ++generation_;
        }
        wake_.notify_all();
        drain(task);
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return pending_workers_ == 0; });
        task_ = nullptr;
    }

private:
    ThreadPool() = default;

    void drain(const std::function<void(int64_t)>& task) {
        for (;;) {
            int64_t i = next_.fetch_add(1);
            if (i >= n_tasks_) break;
            task(i);
        }
    }

    void ensure_workers(int n) {
        while (static_cast<int>(workers_.size()) < n) {
            int id = static_cast<int>(workers_.size());
            workers_.emplace_back([this, id] { worker_loop(id); });
            workers_.back().detach();
        }
    }

    void worker_loop(int id) {
        uint64_t seen = 0;
        for (;;) {
            const std::function<void(int64_t)>* task;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                if (id >= active_workers_) continue;
                task = task_;
            }
            drain(*task);
            {
                std::lock_guard<std::mutex> lock(mutex_);
                if (--pending_workers_ == 0) done_.notify_one();
            }
        }
    }

    std::mutex run_mutex_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(int64_t)>* task_ = nullptr;
    int64_t n_tasks_ = 0;
    std::atomic<int64_t> next_{0};
    int active_workers_ = 0;
    int pending_workers_ = 0;
    uint64_t generation_ = 0;
};

// Inputs smaller than this many elements are processed on the calling thread:
// waking workers costs more than the work.
constexpr int64_t kMinParallelElements = 1 << 16;

// At most this many chunk partials are alive at once (fewer when a partial is
// large): memory is bounded whatever N is, and since partials are still folded
// in plain chunk order the group size never changes a result.
constexpr int64_t kMaxGroup = 64;
constexpr int64_t kGroupBudgetValues = 1 << 20;

// Partials with a reset() method are cleared in place between chunks (large
// ones would otherwise cost a fresh allocation, and its page faults, per chunk).
template <class P, class = void>
struct has_reset : std::false_type {};
template <class P>
struct has_reset<P, std::void_t<decltype(std::declval<P&>().reset())>> : std::true_type {};

// Splits [0, n) into chunks of `chunk` items, computes body(partial, begin, end)
// for each chunk into a fresh partial (made by make()), and folds the partials
// into `total` with combine(total, partial) in chunk order. `partial_values` is
// the size of one partial, to bound how many are alive at once.
template <class Partial, class Make, class Body, class Combine>
void chunked_reduce(int64_t n, int64_t chunk, int64_t work_per_item, int64_t partial_values, Partial& total,
                    Make make, Body body, Combine combine) {
    if (n <= 0) return;
    chunk = std::max<int64_t>(chunk, 1);
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    int threads = get_num_threads();
    if (n * std::max<int64_t>(work_per_item, 1) < kMinParallelElements) threads = 1;
    const int64_t budget_group = kGroupBudgetValues / std::max<int64_t>(partial_values, 1);
    const int64_t group = std::min<int64_t>(std::max<int64_t>(std::min(kMaxGroup, budget_group), 4), n_chunks);
    std::vector<Partial> partials;
    partials.reserve(static_cast<size_t>(group));
    for (int64_t g = 0; g < group; ++g) partials.push_back(make());
    for (int64_t first = 0; first < n_chunks; first += group) {
        const int64_t count = std::min<int64_t>(group, n_chunks - first);
        std::function<void(int64_t)> task = [&](int64_t j) {
            const int64_t c = first + j;
            Partial& p = partials[static_cast<size_t>(j)];
            if constexpr (has_reset<Partial>::value) {
                p.reset();
            } else {
                p = make();
            }
            body(p, c * chunk, std::min(n, (c + 1) * chunk));
        };
        ThreadPool::instance().run(count, threads, task);
        for (int64_t j = 0; j < count; ++j) combine(total, partials[static_cast<size_t>(j)]);
    }
}

// Plain parallel loop over independent chunks (each writes its own output rows).
template <class Body>
void chunked_for(int64_t n, int64_t chunk, int64_t work_per_item, Body body) {
    if (n <= 0) return;
    chunk = std::max<int64_t>(chunk, 1);
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    int threads = get_num_threads();
    if (n * std::max<int64_t>(work_per_item, 1) < kMinParallelElements) threads = 1;
    std::function<void(int64_t)> task = [&](int64_t c) {
        body(c * chunk, std::min(n, (c + 1) * chunk));
    };
    ThreadPool::instance().run(n_chunks, threads, task);
}

}  // namespace calibkit
