#pragma once
// loragrad's threads: one persistent pool, no OpenMP runtime.
//
// parallel_run(n, fn) calls fn(task, thread) once for every task in [0, n):
// the calling thread and the pool's workers take tasks one at a time from a
// shared counter, so a thread whose core is busy with another process simply
// takes fewer of them. The caller waits only for tasks some thread has
// started, never for a worker that has not woken up yet: a worker that lost
// its core does not hold up the step (with OpenMP every barrier waited for
// every thread of the team).
//
// Determinism is the caller's part: a task's output must not depend on which
// thread runs it or in which order tasks run (write disjoint outputs; combine
// per-task partial sums in task order afterwards). `thread` is in
// [0, max_threads) (at most num_threads()) and only picks per-thread scratch
// space: 0 is the calling thread, the others are the pool's workers.
//
// A parallel_run inside a task (or on any thread while the pool is busy with
// another caller's tasks) runs its tasks serially on the calling thread.
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

namespace loragrad {

// Threads parallel work uses, the caller included. At start: the first number
// of OMP_NUM_THREADS if set (as with OpenMP before), else the number of CPUs
// this process may run on (sched_getaffinity: `taskset -c 0,1` gives 2).
int num_threads();
// Sets it (n >= 1; larger than the CPU count is allowed). Waits for parallel
// work in progress on other threads; throws std::logic_error inside a task.
void set_num_threads(int n);

// True inside a task of parallel_run, on whichever thread runs it.
bool in_parallel();

// How idle threads wait, for reports, e.g. "pool: 2 threads, spin 50 us then sleep".
std::string wait_strategy();

namespace detail {
using TaskFn = void (*)(void* ctx, int64_t task, int thread);
void run_tasks(int64_t n_tasks, int max_threads, TaskFn fn, void* ctx);
}  // namespace detail

// fn(task, thread) for task in [0, n_tasks), over the pool: at most
// max_threads threads (0: all of them). An exception thrown by a task is
// rethrown here once every started task has finished (the tasks not yet
// started when it was thrown are skipped).
template <class F>
void parallel_run(int64_t n_tasks, F&& fn, int max_threads = 0) {
  using Fn = std::remove_reference_t<F>;
  detail::run_tasks(
      n_tasks, max_threads, [](void* ctx, int64_t task, int thread) { (*static_cast<Fn*>(ctx))(task, thread); },
      const_cast<void*>(static_cast<const void*>(std::addressof(fn))));
}

}  // namespace loragrad
