#include "loragrad/train/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "loragrad/error.hpp"

namespace loragrad::train {

namespace {

constexpr int kBarCells = 20;
// The live line is redrawn at most this often (a step can take a millisecond).
constexpr double kRedrawSeconds = 0.1;

double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%lds", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  return buf;
}

std::string format_count(double x) {
  if (!std::isfinite(x)) return "?";
  char buf[32];
  const double a = std::fabs(x);
  if (a < 1e3) std::snprintf(buf, sizeof buf, "%.0f", x);
  else if (a < 1e6) std::snprintf(buf, sizeof buf, a < 1e4 ? "%.2fk" : a < 1e5 ? "%.1fk" : "%.0fk", x / 1e3);
  else std::snprintf(buf, sizeof buf, a < 1e7 ? "%.2fM" : a < 1e8 ? "%.1fM" : "%.0fM", x / 1e6);
  return buf;
}

bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO) == 1; }

// The terminal's width, or 80 when it cannot be told (not a terminal).
static size_t terminal_columns() {
  winsize w{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col > 0) return w.ws_col;
  return 80;
}

Progress::Progress(int64_t total_steps, int64_t tokens_per_step, bool quiet, int64_t log_every)
    : Progress(total_steps, tokens_per_step, (!quiet && stdout_is_terminal()) ? Style::bar : Style::lines, std::cout,
               log_every) {}

Progress::Progress(int64_t total_steps, int64_t tokens_per_step, Style style, std::ostream& os, int64_t log_every)
    : total_(total_steps), tokens_per_step_(tokens_per_step), log_every_(log_every), style_(style), os_(os) {
  if (total_steps < 1) throw ValueError("Progress: total_steps must be >= 1, got " + std::to_string(total_steps));
  if (tokens_per_step < 0)
    throw ValueError("Progress: tokens_per_step must be >= 0, got " + std::to_string(tokens_per_step));
  if (log_every < 0) throw ValueError("Progress: log_every must be >= 0, got " + std::to_string(log_every));
  if (log_every_ == 0) log_every_ = total_ >= 10 ? total_ / 10 : 1;
  start_ = last_draw_ = Clock::now();
}

Progress::~Progress() {
  try {
    finish();
  } catch (...) {  // a destructor must not throw; the stream's state is the caller's business
  }
}

double Progress::elapsed_s() const { return seconds_between(start_, Clock::now()); }

double Progress::train_s() const {
  double paused = paused_s_;
  if (paused_) paused += seconds_between(pause_start_, Clock::now());
  return elapsed_s() - paused;
}

double Progress::steps_per_s() const {
  const double t = train_s();
  return t > 0 ? static_cast<double>(step_) / t : 0.0;
}

double Progress::tokens_per_s() const { return steps_per_s() * static_cast<double>(tokens_per_step_); }

void Progress::pause() {
  if (paused_) return;
  paused_ = true;
  pause_start_ = Clock::now();
}

void Progress::resume() {
  if (!paused_) return;
  paused_ = false;
  paused_s_ += seconds_between(pause_start_, Clock::now());
}

std::string Progress::status(bool for_bar) const {
  std::ostringstream s;
  char loss[32];
  std::snprintf(loss, sizeof loss, "%.4f", loss_);
  s << step_ << "/" << total_ << "  loss " << loss;
  if (!extra_.empty()) s << "  " << extra_;
  if (tokens_per_step_ > 0) s << "  " << format_count(tokens_per_s()) << " tok/s";
  else s << "  " << format_count(steps_per_s()) << " steps/s";
  // ETA from wall time: evaluations recur, so they belong in the estimate.
  const double elapsed = elapsed_s();
  const double eta = step_ > 0 ? elapsed / static_cast<double>(step_) * static_cast<double>(total_ - step_) : NAN;
  if (for_bar) s << "  " << format_duration(elapsed) << " < " << format_duration(eta);
  else s << "  elapsed " << format_duration(elapsed) << "  eta " << format_duration(eta);
  return s.str();
}

void Progress::clear_line() {
  if (!drawn_) return;
  os_ << '\r' << std::string(last_width_, ' ') << '\r';
  drawn_ = false;
}

void Progress::draw() {
  // A line that wraps cannot be redrawn with '\r': fit the terminal, shrinking
  // the bar first, then cutting the status.
  const size_t columns = terminal_columns() - 1;
  std::string text = status(true);
  const size_t room = columns > text.size() + 3 ? columns - text.size() - 3 : 0;
  const int cells = static_cast<int>(std::min<size_t>(kBarCells, room));
  std::string line;
  if (cells >= 5) {
    const int filled = static_cast<int>(cells * step_ / total_);
    line = "[" + std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(cells - filled), '.') +
           "] ";
  }
  line += text;
  if (line.size() > columns) line.resize(columns);
  // Pad over a longer previous line instead of relying on terminal escape codes.
  const size_t width = line.size();
  if (width < last_width_) line += std::string(last_width_ - width, ' ');
  os_ << '\r' << line << std::flush;
  last_width_ = std::max(last_width_, width);
  drawn_ = true;
  last_draw_ = Clock::now();
}

void Progress::update(int64_t step, double loss, const std::string& extra) {
  if (finished_) return;
  step_ = step;
  loss_ = loss;
  extra_ = extra;
  if (style_ == Style::bar) {
    if (step_ >= total_ || !drawn_ || seconds_between(last_draw_, Clock::now()) >= kRedrawSeconds) draw();
  } else if (step_ % log_every_ == 0 || step_ == total_) {
    os_ << "step " << status(false) << "\n" << std::flush;
  }
}

void Progress::log(const std::string& line) {
  const bool redraw = drawn_;
  clear_line();
  os_ << line << "\n";
  if (redraw) draw();
  else os_ << std::flush;
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (style_ == Style::bar && step_ > 0) {
    draw();
    os_ << "\n" << std::flush;
  }
}

}  // namespace loragrad::train
