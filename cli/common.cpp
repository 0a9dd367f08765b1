#include "common.hpp"

#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>

#include "loragrad/data/corpus.hpp"
#include "loragrad/error.hpp"
#include "loragrad/files.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/progress.hpp"
#include "loragrad/nn/train_loop.hpp"
#include "loragrad/optim/lr_schedule.hpp"

namespace fs = std::filesystem;

namespace loragrad::cli {

// Checked before any work: a run must not train for minutes and then find it
// cannot write. The probe really creates (and removes) a file next to `path`,
// since permission bits say little when running as root.
void check_can_write(const std::string& path, bool force, const std::string& flag) {
  std::error_code ec;
  if (path.empty()) throw UsageError(flag + " needs a path");
  refuse_temporary_path(path, flag);
  if (fs::exists(path, ec) && !force)
    throw IOError(flag + " " + path + " already exists; pass --force to replace it");
  const fs::path parent = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  fs::create_directories(parent, ec);
  if (ec) throw IOError(flag + " " + path + ": cannot create the directory " + parent.string() + ": " + ec.message());
  const std::string probe = temporary_path(path);
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) throw IOError(flag + " " + path + ": cannot write in " + parent.string() + ": " + std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

void check_file(const std::string& path, const std::string& flag) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw IOError(flag + " " + path + ": no such file");
  if (!fs::is_regular_file(path, ec)) throw IOError(flag + " " + path + ": not a regular file");
}

void check_dir(const std::string& path, const std::string& flag) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw IOError(flag + " " + path + ": no such directory");
  if (!fs::is_directory(path, ec))
    throw IOError(flag + " " + path + ": not a directory (an adapter is a directory with adapter_config.json)");
}

std::shared_ptr<nn::TinyGPT> load_checkpoint(const std::string& path) {
  check_file(path, "--base");
  auto model = nn::TinyGPT::load(path);
  model->eval();
  return model;
}

std::shared_ptr<nn::TinyGPT> load_model(const Args& a) {
  auto model = load_checkpoint(a.str("--base"));
  if (a.given("--adapter")) {
    const std::string dir = a.str("--adapter");
    check_dir(dir, "--adapter");
    lora::load_adapter(*model, dir, "default", /*is_trainable=*/false);
    model->eval();
  }
  return model;
}

ByteDataset training_text(const Args& a, const std::string& default_domain, uint64_t seed) {
  const bool has_data = a.given("--data"), has_domain = a.given("--domain");
  if (has_data && has_domain) throw UsageError("give --data FILE or --domain NAME, not both");
  if (has_data) {
    const std::string path = a.str("--data");
    check_file(path, "--data");
    return ByteDataset::from_file(path, 0.1);
  }
  const std::string name = has_domain ? a.str("--domain") : default_domain;
  if (name.empty()) throw UsageError("give the training text: --data FILE or --domain stories|recipes|code");
  if (name != "stories" && name != "recipes" && name != "code")
    throw UsageError("--domain must be stories, recipes or code, got '" + name + "'");
  return ByteDataset(builtin_corpus(parse_domain(name), size_t{512} << 10, seed), 0.1);
}

void set_threads(const Args& a) {
  if (!a.given("--threads")) return;
  const int64_t n = a.integer("--threads", 0, 1024);
  if (n > 0) omp_set_num_threads(static_cast<int>(n));
}

double train(nn::TinyGPT& model, Optimizer& opt, const ByteDataset& data, const TrainOptions& o) {
  if (data.size(Split::train) < o.seq + 1)
    throw ValueError("the training text holds " + std::to_string(data.size(Split::train)) +
                     " training bytes; --seq " + std::to_string(o.seq) +
                     " needs at least seq + 1 (use a smaller --seq or a longer text)");
  const bool has_validation = data.size(Split::validation) >= o.seq + 1;
  std::vector<Batch> val;
  if (has_validation) val = nn::fixed_batches(data, Split::validation, 4, o.batch, o.seq, o.seed + 1);
  else
    std::cout << "note: the validation tenth of the text is shorter than --seq + 1 bytes: no validation loss\n";

  const LRSchedule schedule = LRSchedule::cosine(std::max<int64_t>(1, o.steps / 20), o.steps, 0.1);
  const int64_t eval_every = std::max<int64_t>(1, o.steps / 5);
  Generator batch_gen(o.seed + 2);
  double last = std::numeric_limits<double>::quiet_NaN();
  model.train();
  nn::Progress progress(o.steps, o.batch * o.seq, o.quiet, eval_every);
  for (int64_t t = 0; t < o.steps; ++t) {
    schedule.apply(opt, t);
    const nn::StepResult r =
        nn::train_step(model, opt, data.sample(Split::train, o.batch, o.seq, batch_gen), o.max_grad_norm);
    nn::stop_unless_finite(r, t + 1);
    if (!has_validation) last = r.loss;
    char lr[32];
    std::snprintf(lr, sizeof lr, "lr %.1e", opt.groups()[0].lr);
    progress.update(t + 1, r.loss, lr);
    if (has_validation && ((t + 1) % eval_every == 0 || t + 1 == o.steps)) {
      nn::Progress::Paused pause(progress);
      last = nn::evaluate(model, val);
      progress.log("step " + std::to_string(t + 1) + ": validation loss " + fixed(last, 4) + " nats/byte");
    }
  }
  progress.finish();
  model.eval();
  std::cout << "speed: " << fixed(progress.steps_per_s(), 2) << " steps/s, " << nn::format_count(progress.tokens_per_s())
            << " tokens/s\n";
  return last;
}

std::string terminal_safe(const std::string& s) {
  std::string out = s;
  for (char& c : out) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u != '\n' && u != '\t' && (u < 0x20 || u > 0x7e)) c = '?';
  }
  return out;
}

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) {
    bytes /= 1024;
    ++u;
  }
  return (u == 0 ? std::to_string(static_cast<int64_t>(bytes)) : fixed(bytes, 2)) + " " + units[u];
}

}  // namespace loragrad::cli
