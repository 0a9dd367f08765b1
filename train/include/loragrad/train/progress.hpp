#pragma once
// Progress: what a training loop shows while it runs.
//
// On a terminal it is one live line, redrawn in place with '\r':
//
//   [########........] 120/600  loss 1.2345  lr 2.9e-03  41.2k tok/s  00:42 < 02:48
//
// Elsewhere (a pipe, a log file, ctest) or when quiet, it prints plain lines
// every log_every steps and at the last step, so a log holds no '\r' garbage:
//
//   step 120/600  loss 1.2345  lr 2.9e-03  41.2k tok/s  elapsed 42s  eta 2m48s
//
// Other output during the run goes through log(), which clears the live line,
// prints, and redraws it. Throughput counts training time only: wrap an
// evaluation in pause()/resume() (or a Progress::Paused scope) so it does not
// lower tokens/s; the ETA uses wall time, evaluations included, since they
// will recur.
#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>

namespace loragrad::train {

// "42s", "2m48s", "1h05m".
std::string format_duration(double seconds);
// "950", "41.2k", "3.10M": a rate or count, 3 significant digits.
std::string format_count(double x);
// True when standard output is a terminal.
bool stdout_is_terminal();

class Progress {
 public:
  enum class Style { bar, lines };

  // total_steps >= 1; tokens_per_step (batch * seq) is used for tokens/s.
  // log_every: the lines style prints every log_every steps (0: about 10
  // lines per run). Writes to std::cout, as a bar when stdout is a terminal
  // and !quiet, else as lines.
  Progress(int64_t total_steps, int64_t tokens_per_step, bool quiet = false, int64_t log_every = 0);
  // Explicit stream and style (for tests, or stderr).
  Progress(int64_t total_steps, int64_t tokens_per_step, Style style, std::ostream& os, int64_t log_every = 0);
  ~Progress();  // ends the live line if finish() was not called
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // After step `step` (1-based: the count of steps done) with its loss.
  // `extra` is shown after the loss, e.g. "lr 2.9e-03".
  void update(int64_t step, double loss, const std::string& extra = "");
  // A line of other output, e.g. a validation loss, without breaking the bar.
  void log(const std::string& line);
  // Stop and restart the training clock (throughput excludes paused time).
  void pause();
  void resume();
  // Ends the live line (a final redraw and a newline). Idempotent.
  void finish();

  struct Paused {  // RAII pause()/resume()
    explicit Paused(Progress& p) : p_(p) { p_.pause(); }
    ~Paused() { p_.resume(); }
    Paused(const Paused&) = delete;
    Paused& operator=(const Paused&) = delete;
   private:
    Progress& p_;
  };

  Style style() const { return style_; }
  int64_t steps_done() const { return step_; }
  double elapsed_s() const;        // wall time since construction
  double train_s() const;          // wall time minus paused time
  double steps_per_s() const;      // steps done / train_s
  double tokens_per_s() const;     // steps done * tokens_per_step / train_s

 private:
  using Clock = std::chrono::steady_clock;
  std::string status(bool for_bar) const;  // the text after the bar / after "step"
  void draw();
  void clear_line();

  int64_t total_, tokens_per_step_, log_every_;
  Style style_;
  std::ostream& os_;
  Clock::time_point start_, pause_start_, last_draw_;
  double paused_s_ = 0.0;
  bool paused_ = false, drawn_ = false, finished_ = false;
  int64_t step_ = 0;
  double loss_ = 0.0;
  std::string extra_;
  size_t last_width_ = 0;  // characters of the live line now on screen
};

}  // namespace loragrad::train
