// The thread pool behind parallel_run (thread_pool.hpp).
//
// One job at a time. The caller publishes it (function, context, task count)
// and opens a ticket, a 64-bit word: the job's serial number in the high half,
// the next task to hand out in the low half. Every thread, the caller
// included, claims tasks with a compare-and-swap on the ticket that also checks
// the serial, runs them, and counts them done; the caller returns when all n
// are done. The job's fields are only used by a thread that has claimed one of
// its tasks, and the job cannot end before that task is done, so the caller
// never waits for a worker that has not started (asleep, or its core taken by
// another process): that worker finds the ticket used up, or moved on to a
// later job, and goes back to waiting.
//
// Waiting (workers between jobs, the caller for the last tasks): spin on the
// word for kSpinMicroseconds, then sleep on it (a futex); but sleep at once
// while the machine is oversubscribed (check_contention). Why:
//   * the gaps between two jobs of a step are short: measured on 2 threads,
//     70% (S) and 53% (M) under 20 us, 74% and 80% under 50 us, the rest
//     mostly 0.1-1 ms (serial ops between GEMMs), and there are 200 (S) to
//     400 (M) jobs per step. A worker that sleeps at once (as loragrad ran
//     before, OMP_WAIT_POLICY=passive) needs a wake-up (a system call, then
//     the scheduler) for most jobs and joins them late: on free cores the S
//     step took 12-15% longer than with a 50 us spin.
//   * a spinning thread takes a core another thread needs when there are
//     more runnable threads than cores: libgomp's default (milliseconds)
//     made steps 5-8x slower on a busy machine; with another process busy on
//     one of 2 cores, even a 50 us spin made our 2-thread S step 1.5x slower
//     than sleeping at once (the caller waited for a core), 1 ms 1.65x.
#include "loragrad/thread_pool.hpp"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <system_error>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace loragrad {
namespace {

// How long a waiting thread spins before it sleeps, while the machine is not
// oversubscribed (LORAGRAD_SPIN_US overrides it, for measurements; 0: never
// spin). Measured on free cores (S, 2 threads, 1 and 2 threads alternating
// step by step in one process): 0 us 77 ms/step, 50 us 68, 200 us 69; so 50.
constexpr int kSpinMicroseconds = 50;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Linux futex on a 32-bit atomic (std::atomic<uint32_t> is a plain uint32_t).
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) && std::atomic<uint32_t>::is_always_lock_free);
void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake_all(std::atomic<uint32_t>& word) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

using Clock = std::chrono::steady_clock;

// Waits until done() is true: spins for spin_us (a clock read every 64
// pauses), then sleeps on `word` while it holds the value last seen.
// `sleepers` counts the threads that may be asleep on it, so that a waker
// skips the system call when none is.
template <class Done>
void wait_until(Done done, std::atomic<uint32_t>& word, std::atomic<int>& sleepers, int spin_us) {
  if (done()) return;
  if (spin_us > 0) {
    const auto until = Clock::now() + std::chrono::microseconds(spin_us);
    for (int i = 1;; ++i) {
      cpu_relax();
      if (done()) return;
      if (i % 64 == 0 && Clock::now() >= until) break;
    }
  }
  for (;;) {
    const uint32_t seen = word.load();
    sleepers.fetch_add(1);  // seq_cst, paired with the waker's: it sees us or we see its change
    if (!done()) futex_wait(word, seen);
    sleepers.fetch_sub(1);
    if (done()) return;
  }
}

// Involuntary context switches of the calling thread: how often the
// scheduler took its core away while it could run.
long preemptions_of_this_thread() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  return ru.ru_nivcsw;
}

void wake(std::atomic<uint32_t>& word, std::atomic<int>& sleepers) {
  if (sleepers.load() > 0) futex_wake_all(word);
}

int cpus_available() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

int default_threads() {
  // OMP_NUM_THREADS: "4" or a nesting list "4,2" (its first level).
  if (const char* s = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(s, &end, 10);
    if (end != s && n >= 1) return static_cast<int>(std::min(n, 1024L));
  }
  return cpus_available();
}

int spin_from_env() {
  if (const char* s = std::getenv("LORAGRAD_SPIN_US")) {
    char* end = nullptr;
    const long us = std::strtol(s, &end, 10);
    if (end != s && us >= 0) return static_cast<int>(std::min(us, 1000000L));
  }
  return kSpinMicroseconds;
}

thread_local bool t_in_parallel = false;

// Sets t_in_parallel for a scope, restoring the old value (also on a throw).
struct InParallel {
  bool saved = t_in_parallel;
  InParallel() { t_in_parallel = true; }
  ~InParallel() { t_in_parallel = saved; }
};

void run_serial(int64_t n, detail::TaskFn fn, void* ctx) {
  InParallel guard;
  for (int64_t i = 0; i < n; ++i) fn(ctx, i, 0);
}

constexpr uint64_t kIndexMask = 0xFFFFFFFFu;
constexpr uint64_t kClosed = kIndexMask;  // low half while a job is being published: nothing to claim

class Pool {
 public:
  static Pool& get() {
    // Never destroyed: workers asleep at exit die with the process, and no
    // static destructor order can pull the pool from under a late caller.
    static Pool* pool = new Pool;
    return *pool;
  }

  int size() const { return size_.load(std::memory_order_relaxed); }
  int spin_us() const { return spin_us_; }
  // Checks so far, and those that found the caller preempted.
  long checks() const { return checks_.load(std::memory_order_relaxed); }
  long preempted_checks() const { return preempted_checks_.load(std::memory_order_relaxed); }

  void resize(int n) {
    lock();
    if (n != size_.load()) {
      stop_workers();
      size_.store(n);
    }
    busy_.store(false, std::memory_order_release);
  }

  // False (and nothing done) when another thread's job holds the pool, or its
  // workers cannot be started. Threads [0, team) take part.
  bool try_run(int64_t n, int team, detail::TaskFn fn, void* ctx) {
    if (busy_.exchange(true, std::memory_order_acquire)) return false;
    check_contention();
    try {
      start_workers();
    } catch (const std::system_error&) {  // no thread for us now: run serially
      busy_.store(false, std::memory_order_release);
      return false;
    }
    // Publish: close the ticket under a new serial first, so that a worker
    // still holding the old serial cannot claim against the new fields (its
    // compare-and-swap fails), then write them, then open the ticket.
    const uint64_t serial = (ticket_.load(std::memory_order_relaxed) >> 32) + 1;
    ticket_.store(serial << 32 | kClosed, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    fn_.store(fn, std::memory_order_relaxed);
    ctx_.store(ctx, std::memory_order_relaxed);
    n_.store(n, std::memory_order_relaxed);
    team_.store(team, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    failed_.store(false, std::memory_order_relaxed);
    ticket_.store(serial << 32, std::memory_order_release);
    posted_.fetch_add(1);
    wake(posted_, posted_sleepers_);

    {
      InParallel guard;
      work(0);
    }
    wait_until([&] { return done_.load() == static_cast<uint32_t>(n); }, done_, done_sleepers_,
               spin_now_.load(std::memory_order_relaxed));
    std::exception_ptr error = failed_.load(std::memory_order_acquire) ? std::move(error_) : nullptr;
    error_ = nullptr;
    busy_.store(false, std::memory_order_release);
    if (error) std::rethrow_exception(error);
    return true;
  }

 private:
  Pool() : size_(default_threads()), spin_us_(spin_from_env()) {
    // A child of fork() has only the forking thread: it forgets the workers
    // (their std::thread objects are kept, never joined) and starts its own
    // when it first needs them. Until then its jobs still finish: the
    // caller runs every task no worker claims.
    ::pthread_atfork(nullptr, nullptr, [] {
      static std::vector<std::thread>* forgotten = new std::vector<std::thread>;
      Pool& p = get();
      for (std::thread& w : p.workers_) forgotten->push_back(std::move(w));
      p.workers_.clear();
    });
  }

  // Spinning pays only while our threads have their cores (see the top of
  // this file). So every kCheckEvery the caller looks at its involuntary
  // context switches: if it was preempted since the last look, the machine
  // is oversubscribed, and waits sleep at once until a look finds it was not.
  static constexpr auto kCheckEvery = std::chrono::milliseconds(10);
  void check_contention() {
    const Clock::time_point now = Clock::now();
    if (now - last_check_ < kCheckEvery) return;
    const long preempted = preemptions_of_this_thread();
    const std::thread::id me = std::this_thread::get_id();
    if (me == last_caller_) {
      const bool calm = preempted == last_preempted_;
      spin_now_.store(calm ? spin_us_ : 0, std::memory_order_relaxed);
      checks_.fetch_add(1, std::memory_order_relaxed);
      if (!calm) preempted_checks_.fetch_add(1, std::memory_order_relaxed);
    }
    last_caller_ = me;  // (another thread's count says nothing about this one's)
    last_preempted_ = preempted;
    last_check_ = now;
  }

  void lock() {
    while (busy_.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
  }

  // Claims and runs tasks of the current job until none is left.
  void work(int thread) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    if ((t & kIndexMask) == kClosed) return;  // being published: posted_ will change again
    const uint64_t serial = t >> 32;
    const int64_t n = n_.load(std::memory_order_relaxed);
    const int team = team_.load(std::memory_order_relaxed);
    const detail::TaskFn fn = fn_.load(std::memory_order_relaxed);
    void* const ctx = ctx_.load(std::memory_order_relaxed);
    // Pairs with the publisher's release fence: if those fields are a later
    // job's, the compare-and-swap below sees that job's closed ticket and fails.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (thread >= team) return;  // (a stale team is harmless: the claim below fails)
    for (;;) {
      if ((t >> 32) != serial || static_cast<int64_t>(t & kIndexMask) >= n) return;
      if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        continue;  // t is now the current ticket
      // Task t of this job is ours; the job cannot end before we count it done.
      if (!failed_.load(std::memory_order_relaxed)) {
        try {
          fn(ctx, static_cast<int64_t>(t & kIndexMask), thread);
        } catch (...) {
          if (!failed_.exchange(true)) error_ = std::current_exception();
        }
      }
      if (done_.fetch_add(1) + 1 == static_cast<uint32_t>(n)) {
        wake(done_, done_sleepers_);  // the job is over: touch nothing of it after this
        return;
      }
      t = ticket_.load(std::memory_order_acquire);
    }
  }

  void worker_main(int id) {
    t_in_parallel = true;  // a parallel_run inside a task runs serially
    // stop_ is in the wait's condition too: a worker that starts late may read
    // posted_ after stop_workers() has bumped it for the last time.
    uint32_t seen = posted_.load();
    for (;;) {
      wait_until([&] { return posted_.load() != seen || stop_.load(); }, posted_, posted_sleepers_,
                 spin_now_.load(std::memory_order_relaxed));
      if (stop_.load()) return;
      seen = posted_.load();
      work(id);
    }
  }

  // Called with the pool held.
  void start_workers() {
    const int want = size_.load() - 1;
    if (static_cast<int>(workers_.size()) == want) return;
    stop_workers();
    for (int id = 1; id <= want; ++id) workers_.emplace_back([this, id] { worker_main(id); });
  }

  void stop_workers() {
    if (workers_.empty()) return;
    stop_.store(true);
    posted_.fetch_add(1);
    futex_wake_all(posted_);
    for (std::thread& w : workers_) w.join();
    workers_.clear();
    stop_.store(false);
  }

  std::atomic<int> size_;
  const int spin_us_;
  std::atomic<int> spin_now_{spin_us_};  // spin_us_, or 0 while the machine is oversubscribed
  Clock::time_point last_check_{};       // check_contention()'s state, the pool held
  std::thread::id last_caller_{};
  long last_preempted_ = 0;
  std::atomic<long> checks_{0}, preempted_checks_{0};
  std::atomic<bool> busy_{false};  // a caller holds the pool (one job at a time)
  std::vector<std::thread> workers_;
  std::atomic<bool> stop_{false};

  // The current job. fn_, ctx_, n_, team_ are written only while the ticket is closed.
  std::atomic<uint64_t> ticket_{0};  // serial << 32 | next task (kClosed: being published)
  std::atomic<detail::TaskFn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int> team_{0};  // threads [0, team_) take part
  std::atomic<uint32_t> done_{0};   // tasks finished; the caller sleeps on it
  std::atomic<int> done_sleepers_{0};
  std::atomic<bool> failed_{false};  // a task threw: error_ holds the first exception
  std::exception_ptr error_;

  std::atomic<uint32_t> posted_{0};  // bumped for each job; idle workers sleep on it
  std::atomic<int> posted_sleepers_{0};
};

}  // namespace

int num_threads() { return Pool::get().size(); }

void set_num_threads(int n) {
  if (t_in_parallel) throw std::logic_error("set_num_threads: called from inside a parallel task");
  Pool::get().resize(std::max(1, n));
}

bool in_parallel() { return t_in_parallel; }

std::string wait_strategy() {
  const Pool& pool = Pool::get();
  std::string s = "loragrad pool, " + std::to_string(pool.size()) + " thread" + (pool.size() == 1 ? "" : "s") +
                  ": spin " + std::to_string(pool.spin_us()) + " us then sleep, or sleep at once while the caller is preempted";
  if (const long checks = pool.checks(); checks > 0)
    s += " (so far: " + std::to_string((100 * pool.preempted_checks() + checks / 2) / checks) + "% of " +
         std::to_string(checks) + " checks)";
  return s;
}

namespace detail {
void run_tasks(int64_t n_tasks, int max_threads, TaskFn fn, void* ctx) {
  if (n_tasks <= 0) return;
  Pool& pool = Pool::get();
  const int team = max_threads > 0 ? std::min(max_threads, pool.size()) : pool.size();
  if (n_tasks == 1 || team == 1 || t_in_parallel || n_tasks >= static_cast<int64_t>(kClosed) ||
      !pool.try_run(n_tasks, team, fn, ctx))
    run_serial(n_tasks, fn, ctx);
}
}  // namespace detail

}  // namespace loragrad
