// The thread pool (thread_pool.hpp): every task runs exactly once, thread
// indices stay in range, nested and concurrent calls run serially, exceptions
// reach the caller, and many short jobs in a row (the hand-over between jobs)
// lose nothing. More threads than cores are used on purpose: workers then
// lose their cores at any moment, the case the pool is written for.
#define BOOST_TEST_MODULE thread_pool
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "loragrad/parallel.hpp"
#include "loragrad/thread_pool.hpp"

using namespace loragrad;

namespace {

struct ThreadsGuard {
  int saved = num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

// Runs n tasks and checks each ran once, on a thread index in range.
void check_once(int64_t n) {
  std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
  std::atomic<bool> bad_thread{false}, outside{false};
  const int nt = num_threads();
  parallel_run(n, [&](int64_t task, int thread) {
    if (thread < 0 || thread >= nt) bad_thread = true;
    if (!in_parallel()) outside = true;
    runs[static_cast<size_t>(task)].fetch_add(1);
  });
  int64_t wrong = 0;
  for (auto& r : runs) wrong += r.load() != 1;
  BOOST_TEST(wrong == 0, n << " tasks on " << nt << " threads: " << wrong << " not run exactly once");
  BOOST_TEST(!bad_thread);
  BOOST_TEST(!outside);
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_task_runs_once) {
  ThreadsGuard guard;
  for (int nt : {1, 2, 3, 8}) {
    set_num_threads(nt);
    BOOST_TEST(num_threads() == nt);
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1000}) check_once(n);
  }
  BOOST_TEST(!in_parallel());
}

// Thousands of tiny jobs back to back: a worker that wakes late must never
// run a task of a job that is over, nor a task of the next job twice.
BOOST_AUTO_TEST_CASE(many_short_jobs) {
  ThreadsGuard guard;
  for (int nt : {2, 5}) {
    set_num_threads(nt);
    std::vector<std::atomic<int64_t>> sums(16);
    for (int job = 0; job < 20000; ++job) {
      const int64_t n = 1 + job % 16;
      parallel_run(n, [&](int64_t task, int) { sums[static_cast<size_t>(task)].fetch_add(job + 1); });
    }
    for (int64_t t = 0; t < 16; ++t) {
      int64_t want = 0;
      for (int job = 0; job < 20000; ++job)
        if (t < 1 + job % 16) want += job + 1;
      BOOST_TEST(sums[static_cast<size_t>(t)].load() == want, "task " << t << " on " << nt << " threads");
    }
  }
}

BOOST_AUTO_TEST_CASE(nested_calls_run_serially_on_the_caller) {
  ThreadsGuard guard;
  set_num_threads(3);
  std::atomic<int> wrong{0};
  parallel_run(6, [&](int64_t, int) {
    const std::thread::id me = std::this_thread::get_id();
    parallel_run(5, [&](int64_t, int thread) {
      if (std::this_thread::get_id() != me || thread != 0 || !in_parallel()) ++wrong;
    });
    if (use_threads(int64_t{1} << 30)) ++wrong;  // parallel.hpp's loops see it too
  });
  BOOST_TEST(wrong.load() == 0);
}

// Another thread's call while the pool is busy runs on that thread, correctly.
BOOST_AUTO_TEST_CASE(concurrent_callers) {
  ThreadsGuard guard;
  set_num_threads(2);
  std::atomic<int64_t> total{0};
  auto caller = [&] {
    for (int i = 0; i < 2000; ++i) parallel_run(8, [&](int64_t task, int) { total.fetch_add(task + 1); });
  };
  std::thread a(caller), b(caller);
  a.join();
  b.join();
  BOOST_TEST(total.load() == 2 * 2000 * 36);
}

BOOST_AUTO_TEST_CASE(an_exception_reaches_the_caller) {
  ThreadsGuard guard;
  for (int nt : {1, 3}) {
    set_num_threads(nt);
    BOOST_CHECK_THROW(parallel_run(50,
                                   [](int64_t task, int) {
                                     if (task == 17) throw std::runtime_error("task 17");
                                   }),
                      std::runtime_error);
    BOOST_TEST(!in_parallel());
    check_once(100);  // and the pool still works
  }
}

BOOST_AUTO_TEST_CASE(max_threads_bounds_the_thread_index) {
  ThreadsGuard guard;
  set_num_threads(4);
  for (int max : {1, 2, 3}) {
    std::atomic<int> top{0};
    std::atomic<int64_t> count{0};
    parallel_run(
        200,
        [&](int64_t, int thread) {
          int t = top.load();
          while (thread > t && !top.compare_exchange_weak(t, thread)) {
          }
          count.fetch_add(1);
        },
        max);
    BOOST_TEST(top.load() < max);
    BOOST_TEST(count.load() == 200);
  }
}

BOOST_AUTO_TEST_CASE(set_num_threads_refused_inside_a_task) {
  ThreadsGuard guard;
  set_num_threads(2);
  bool threw = false;
  parallel_run(1, [&](int64_t, int) {
    try {
      set_num_threads(3);
    } catch (const std::logic_error&) {
      threw = true;
    }
  });
  BOOST_TEST(threw);
  BOOST_TEST(num_threads() == 2);
}

BOOST_AUTO_TEST_CASE(parallel_ranges_cover_everything_once) {
  ThreadsGuard guard;
  for (int nt : {1, 2, 3}) {
    set_num_threads(nt);
    for (int64_t n : {int64_t{1}, int64_t{5}, int64_t{100000}}) {
      std::vector<uint8_t> seen(static_cast<size_t>(n), 0);
      parallel_ranges(n, kParallelWork, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) ++seen[static_cast<size_t>(i)];
      });
      int64_t wrong = 0;
      for (uint8_t s : seen) wrong += s != 1;
      BOOST_TEST(wrong == 0);
    }
  }
}

BOOST_AUTO_TEST_CASE(wait_strategy_is_reported) {
  ThreadsGuard guard;
  set_num_threads(2);
  const std::string s = wait_strategy();
  BOOST_TEST(s.find("2 threads") != std::string::npos, s);
  BOOST_TEST(s.find("spin") != std::string::npos, s);
}
