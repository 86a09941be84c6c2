// Deterministic parallel execution for calibkit kernels.
//
// Work is cut into fixed-size chunks whose size depends only on the problem
// (never on the thread count). Each chunk produces its own partial result and
// partials are combined strictly in chunk order, so every result is
// bit-for-bit identical for any number of threads.
//
// A persistent pool avoids paying thread start-up on every call (streaming
// updates call kernels many times on small batches). If the pool is busy
// (another Python thread is inside a kernel, or a kernel is called from inside
// a pool task), the caller runs its tasks itself: still correct and
// deterministic, never a deadlock.
//
// The pool is fork-safe: a child made by fork() has none of the parent's worker
// threads (and may hold copies of the pool's mutexes in a locked state), so a
// pthread_atfork child handler abandons the inherited pool and the child makes
// a fresh one on its next parallel call.
//
// Every task runs inside try/catch: an exception (std::bad_alloc, ...) never
// reaches std::terminate on a worker thread. Once a task has thrown no new task
// starts; the tasks already running finish, and the exception of the task with
// the lowest index is rethrown on the calling thread, which is the exception a
// serial run would have thrown first.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#define CALIBKIT_HAVE_PTHREAD_ATFORK 1
#endif
#if defined(__linux__)
#include <sched.h>
#endif

namespace calibkit {

inline int hardware_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
}

namespace detail {

// A positive integer from the start of `text` ("4" or "4,2" as OMP_NUM_THREADS
// allows for nested levels), or 0 when there is none.
inline int leading_positive_int(const char* text) {
    if (text == nullptr) return 0;
    while (*text == ' ' || *text == '\t') ++text;
    long v = 0;
    bool any = false;
    for (; *text >= '0' && *text <= '9'; ++text) {
        any = true;
        v = v * 10 + (*text - '0');
        if (v > 1 << 20) return 0;
    }
    while (*text == ' ' || *text == '\t') ++text;
    if (!any || v < 1 || (*text != '\0' && *text != ',')) return 0;
    return static_cast<int>(v);
}

// CPUs allowed by a cgroup CPU quota (v2 cpu.max, else v1 cfs quota), rounded
// up; 0 when there is no quota or it cannot be read. Only the files at the
// cgroup mount root are read (cheap): that is the process's own cgroup inside a
// container with a cgroup namespace (docker --cpus, Kubernetes limits); a quota
// set on a nested cgroup without a namespace is not seen.
inline int cgroup_cpu_limit() {
#if defined(__linux__)
    auto quota_over_period = [](double quota, double period) -> int {
        if (!(quota > 0.0) || !(period > 0.0)) return 0;
        double cpus = quota / period;
        int n = static_cast<int>(cpus);
        if (static_cast<double>(n) < cpus) ++n;
        return std::max(n, 1);
    };
    if (FILE* f = std::fopen("/sys/fs/cgroup/cpu.max", "r")) {
        char quota[32] = {0};
        double period = 0.0;
        int got = std::fscanf(f, "%31s %lf", quota, &period);
        std::fclose(f);
        if (got == 2 && std::string(quota) != "max") return quota_over_period(std::atof(quota), period);
        return 0;
    }
    double quota = -1.0, period = 0.0;
    if (FILE* f = std::fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r")) {
        if (std::fscanf(f, "%lf", &quota) != 1) quota = -1.0;
        std::fclose(f);
    }
    if (FILE* f = std::fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r")) {
        if (std::fscanf(f, "%lf", &period) != 1) period = 0.0;
        std::fclose(f);
    }
    return quota_over_period(quota, period);
#else
    return 0;
#endif
}

}  // namespace detail

// CPUs this process may run on: the CPUs of its affinity mask (taskset, cpusets)
// where the OS has one, else the hardware threads; lowered to a cgroup CPU
// quota (containers started with --cpus) when one is set.
inline int usable_cpus() {
    int n = 0;
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
#endif
    if (n < 1) n = hardware_threads();
    const int quota = detail::cgroup_cpu_limit();
    if (quota > 0) n = std::min(n, quota);
    return std::max(n, 1);
}

// The default thread count, read once at the first kernel call:
//   usable_cpus(), capped by CALIBKIT_NUM_THREADS when it is set to a positive
//   integer, else by OMP_NUM_THREADS (its first entry) when that is.
// Values that are not positive integers are ignored. set_num_threads(n)
// replaces the default with exactly n.
inline int default_num_threads() {
    int n = usable_cpus();
    int cap = detail::leading_positive_int(std::getenv("CALIBKIT_NUM_THREADS"));
    if (cap == 0) cap = detail::leading_positive_int(std::getenv("OMP_NUM_THREADS"));
    if (cap > 0) n = std::min(n, cap);
    return n;
}

inline std::atomic<int>& num_threads_setting() {
    static std::atomic<int> n{default_num_threads()};
    return n;
}

inline int get_num_threads() { return num_threads_setting().load(); }

// Largest thread count accepted by set_num_threads (more would only start idle threads).
constexpr int kMaxThreads = 1024;

inline void set_num_threads(int n) { num_threads_setting().store(std::clamp(n, 1, kMaxThreads)); }

class ThreadPool {
public:
    static ThreadPool& instance() {
        static const bool registered = register_fork_handler();
        (void)registered;
        ThreadPool* pool = current().load(std::memory_order_acquire);
        if (pool == nullptr) {
            ThreadPool* fresh = new ThreadPool();
            if (current().compare_exchange_strong(pool, fresh, std::memory_order_acq_rel)) {
                pool = fresh;
            } else {
                delete fresh;  // another thread installed one first; `pool` now holds it
            }
        }
        return *pool;
    }

    // Runs task(i) for i in [0, n_tasks) on up to n_threads threads (the caller
    // included) and returns when all are done. If tasks throw, the exception of
    // the lowest-index task that threw is rethrown here, after every running
    // task has finished (tasks not yet started when the first one threw are
    // skipped).
    void run(int64_t n_tasks, int n_threads, const std::function<void(int64_t)>& task) {
        if (n_tasks <= 0) return;
        n_threads = static_cast<int>(std::min<int64_t>(n_threads, n_tasks));
        if (in_task()) n_threads = 1;  // a kernel called from inside a task: never re-lock run_mutex_
        std::unique_lock<std::mutex> busy(run_mutex_, std::defer_lock);
        if (n_threads > 1) busy.try_lock();
        if (n_threads > 1 && busy.owns_lock()) n_threads = 1 + ensure_workers(n_threads - 1);
        if (n_threads <= 1 || !busy.owns_lock()) {
            for (int64_t i = 0; i < n_tasks; ++i) task(i);  // the first exception propagates as is
            return;
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            task_ = &task;
            n_tasks_ = n_tasks;
            next_.store(0);
            error_ = nullptr;
            error_index_ = n_tasks;
            active_workers_ = n_threads - 1;
            pending_workers_ = n_threads - 1;
            ++generation_;
        }
        wake_.notify_all();
        drain(task);
        std::exception_ptr error;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [this] { return pending_workers_ == 0; });
            task_ = nullptr;
            error = error_;
            error_ = nullptr;
        }
        if (error) std::rethrow_exception(error);
    }

private:
    ThreadPool() = default;

    // The pool of this process. After fork() the child's copy points to the
    // parent's pool, whose threads do not exist in the child: the child handler
    // forgets it (leaked: its mutexes may be locked and must never be used).
    static std::atomic<ThreadPool*>& current() {
        static std::atomic<ThreadPool*> pool{nullptr};
        return pool;
    }

    // True while this thread runs a task of a parallel run.
    static bool& in_task() {
        static thread_local bool flag = false;
        return flag;
    }

    static bool register_fork_handler() {
#ifdef CALIBKIT_HAVE_PTHREAD_ATFORK
        pthread_atfork(nullptr, nullptr, [] { current().store(nullptr, std::memory_order_release); });
#endif
        return true;
    }

    void drain(const std::function<void(int64_t)>& task) {
        for (;;) {
            int64_t i = next_.fetch_add(1);
            if (i >= n_tasks_) break;
            try {
                in_task() = true;
                task(i);
                in_task() = false;
            } catch (...) {
                in_task() = false;
                std::lock_guard<std::mutex> lock(mutex_);
                if (i < error_index_) {
                    error_index_ = i;
                    error_ = std::current_exception();
                }
                next_.store(n_tasks_);  // start no further task
            }
        }
    }

    // Starts workers until there are n; returns how many exist (fewer when the
    // system refuses new threads: the call then runs on fewer threads).
    int ensure_workers(int n) {
        while (static_cast<int>(workers_.size()) < n) {
            const int id = static_cast<int>(workers_.size());
            try {
                workers_.emplace_back([this, id] { worker_loop(id); });
            } catch (...) {
                break;
            }
            workers_.back().detach();
        }
        return std::min<int>(n, static_cast<int>(workers_.size()));
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
    std::exception_ptr error_;
    int64_t error_index_ = 0;
    int active_workers_ = 0;
    int pending_workers_ = 0;
    uint64_t generation_ = 0;
};

// Inputs smaller than this many elements are processed on the calling thread:
// waking workers costs more than the work.
constexpr int64_t kMinParallelElements = 1 << 16;

// At most this many chunk partials are alive at once (fewer when a partial is
// large): memory is bounded whatever N is, and since partials are still folded
// in plain chunk order the group size never changes a result. The budget (2 MB
// of doubles) keeps a call's partials few when they are large: class-wise bins of
// K = 1000 classes (60,000 values a partial) take groups of 4, not 17, whose fresh
// pages (zeroed by the kernel on first touch, per call) cost 15-45% of a
// 20,000-row call. Each group is one pool run (a wake-up of the workers): small
// partials come 256 chunks a group, so that a call of 10M x 10 probabilities
// (3052 chunks) is 12 runs, not 48 (each a chance for a descheduled worker to
// hold the others up on a busy host; the Numba twin's parallel regions too).
constexpr int64_t kMaxGroup = 256;
constexpr int64_t kGroupBudgetValues = 1 << 18;

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
