// Trainer: the loop, validation and early stopping, metrics.csv, checkpoints and resume.
#include "loragrad/train/trainer.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "loragrad/autograd.hpp"
#include "loragrad/files.hpp"
#include "loragrad/format.hpp"
#include "loragrad/memory.hpp"
#include "loragrad/nn/layers.hpp"
#include "loragrad/nn/linear_base.hpp"
#include "loragrad/train/kl.hpp"

namespace loragrad::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kMetricsFile = "metrics.csv";
constexpr const char* kStateFormat = "loragrad-trainer-1";

// Shortest text that reads back as the same double; empty for NaN (no value).
std::string csv_number(double x) {
  if (std::isnan(x)) return "";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

std::string metrics_csv(const std::vector<MetricsRow>& rows) {
  // New columns go at the end: readers that pick columns by number keep working.
  std::string s = "step,train_loss,val_loss,lr,tokens_per_s,grad_norm,old_loss,kl\n";
  for (const MetricsRow& r : rows)
    s += std::to_string(r.step) + "," + csv_number(r.train_loss) + "," + csv_number(r.val_loss) + "," +
         csv_number(r.lr) + "," + csv_number(r.tokens_per_s) + "," + csv_number(r.grad_norm) + "," +
         csv_number(r.old_loss) + "," + csv_number(r.kl) + "\n";
  return s;
}

std::vector<MetricsRow> parse_metrics_csv(const std::string& text, const std::string& path) {
  std::vector<MetricsRow> rows;
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);  // header
  auto number = [&](const std::string& cell) { return cell.empty() ? NAN : std::stod(cell); };
  while (std::getline(in, line)) {
    std::vector<std::string> cells;
    std::stringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) cells.push_back(cell);
    // A checkpoint from before old_loss has 6 cells, one from before kl 7
    // (and a row whose last cells are empty ends early: getline drops them).
    while (cells.size() < 8) cells.emplace_back();
    try {
      MetricsRow r;
      r.step = std::stoll(cells[0]);
      r.train_loss = number(cells[1]);
      r.val_loss = number(cells[2]);
      r.lr = number(cells[3]);
      r.tokens_per_s = number(cells[4]);
      r.grad_norm = number(cells[5]);
      r.old_loss = number(cells[6]);
      r.kl = number(cells[7]);
      rows.push_back(r);
    } catch (const std::exception&) {
      throw IOError(path + ": malformed line '" + printable(line) + "'");
    }
  }
  return rows;
}

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw IOError(path + ": no such file");
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) throw IOError(path + ": read error");
  return ss.str();
}

// The bytes the model's weights and gradients hold now, by kind.
void weight_bytes(const nn::Module& model, MemoryUse& m) {
  m.frozen_weights = m.trainable_weights = m.gradients = 0;
  for (const Tensor& p : model.parameters()) {
    (p.requires_grad() ? m.trainable_weights : m.frozen_weights) += memory::storage_bytes(p.nbytes());
    if (p.grad().defined()) m.gradients += memory::storage_bytes(p.grad().nbytes());
  }
  for (const auto& [path, mod] : model.named_modules())
    if (auto base = std::dynamic_pointer_cast<nn::LinearBase>(mod); base && base->quantized())
      m.frozen_weights += base->weight_bytes();  // packed codes: not a parameter
}

}  // namespace

std::string MemoryUse::str() const {
  const auto fb = [](size_t b) { return format_bytes(static_cast<double>(b)); };
  return "frozen base " + fb(frozen_weights) + ", trainable " + fb(trainable_weights) +
         ", gradients " + fb(gradients) + ", optimizer state " + fb(optimizer_state) +
         ", activations (peak) " + fb(activations_peak) + "; peak tensor bytes " + fb(peak_total);
}

// ============================ config ============================

void TrainConfig::validate() const {
  auto at_least = [](int64_t v, int64_t lo, const char* name) {
    if (v < lo)
      throw ValueError(std::string("TrainConfig: ") + name + " must be >= " + std::to_string(lo) + ", got " +
                       std::to_string(v));
  };
  at_least(steps, 1, "steps");
  at_least(batch, 1, "batch");
  at_least(seq, 1, "seq");
  at_least(grad_accum, 1, "grad_accum");
  at_least(warmup, -1, "warmup");
  at_least(eval_every, 0, "eval_every");
  at_least(eval_batches, 1, "eval_batches");
  at_least(early_stop, 0, "early_stop");
  at_least(save_every, 0, "save_every");
  if (schedule != "cosine" && schedule != "linear" && schedule != "constant")
    throw ValueError("TrainConfig: schedule must be cosine, linear or constant, got '" + schedule + "'");
  if (warmup > steps)
    throw ValueError("TrainConfig: warmup " + std::to_string(warmup) + " exceeds steps " + std::to_string(steps));
  if (!(clip_norm >= 0) || !std::isfinite(clip_norm))
    throw ValueError("TrainConfig: clip_norm must be >= 0 (0: no clipping), got " + std::to_string(clip_norm));
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1))
    throw ValueError("TrainConfig: min_lr_ratio must be in [0, 1], got " + std::to_string(min_lr_ratio));
  if (save_every > 0 && out_dir.empty()) throw ValueError("TrainConfig: save_every needs an out_dir");
}

optim::LRSchedule TrainConfig::lr_schedule() const {
  const int64_t w = warmup >= 0 ? warmup : std::max<int64_t>(1, steps / 20);
  if (schedule == "constant") return optim::LRSchedule::constant(w);
  if (schedule == "linear") return optim::LRSchedule::linear(w, steps);
  return optim::LRSchedule::cosine(w, steps, min_lr_ratio);
}

// ============================ the loop ============================

Trainer::Trainer(nn::TinyGPT& model, optim::Optimizer& optimizer, TextSource train, TextSource val, TrainConfig config,
                 Output output, json identity)
    : model_(model),
      opt_(optimizer),
      train_(train),
      val_(val),
      cfg_(std::move(config)),
      output_(std::move(output)),
      identity_(std::move(identity)),
      schedule_((cfg_.validate(), cfg_.lr_schedule())),
      batch_gen_(cfg_.seed + 2),
      kl_gen_(cfg_.seed + 4) {
  if (!train_.data) throw ValueError("Trainer: no training text");
  const std::string why = train_.data->cannot_sample(train_.split, cfg_.seq);
  if (!why.empty()) throw ValueError("Trainer: " + why + " (use another seq, or more data)");
  if (cfg_.seq > model_.config().block_size)
    throw ValueError("Trainer: seq " + std::to_string(cfg_.seq) + " exceeds the model's block size " +
                     std::to_string(model_.config().block_size));
  if (val_.data && val_.data->cannot_sample(val_.split, cfg_.seq).empty())
    val_batches_ = fixed_batches(*val_.data, val_.split, cfg_.eval_batches, cfg_.batch, cfg_.seq, cfg_.seed + 1);
  identity_["seed"] = cfg_.seed;
  identity_["batch"] = cfg_.batch;
  identity_["seq"] = cfg_.seq;
  identity_["grad_accum"] = cfg_.grad_accum;
  identity_["model"] = json::object();
  for (const auto& [k, v] : model_.config().to_metadata()) identity_["model"][k] = v;
}

void Trainer::track_old_loss(TextSource old) {
  if (!old.data) throw ValueError("Trainer::track_old_loss: no data");
  const std::string why = old.data->cannot_sample(old.split, cfg_.seq);
  if (!why.empty()) throw ValueError("Trainer::track_old_loss: " + why);
  old_batches_ = fixed_batches(*old.data, old.split, cfg_.eval_batches, cfg_.batch, cfg_.seq, cfg_.seed + 3);
}

void Trainer::add_kl_to_base(TextSource data, double weight) {
  if (resumed_) throw ValueError("Trainer::add_kl_to_base: call it before resume()");
  if (!(weight > 0) || !std::isfinite(weight))
    throw ValueError("Trainer::add_kl_to_base: the weight must be positive and finite, got " + std::to_string(weight));
  if (!data.data) throw ValueError("Trainer::add_kl_to_base: no data");
  const std::string why = data.data->cannot_sample(data.split, cfg_.seq);
  if (!why.empty()) throw ValueError("Trainer::add_kl_to_base: " + why);
  check_kl_to_base(model_);
  kl_weight_ = weight;
  kl_ = data;
  kl_eval_batches_ = fixed_batches(*kl_.data, kl_.split, cfg_.eval_batches, cfg_.batch, cfg_.seq, cfg_.seed + 5);
  identity_["kl_weight"] = weight;
}

std::string Trainer::checkpoint_name(int64_t step) { return "checkpoint-" + std::to_string(step); }

std::vector<data::Batch> Trainer::next_micro_batches() {
  std::vector<data::Batch> mb;
  for (int64_t k = 0; k < cfg_.grad_accum; ++k) mb.push_back(train_.data->sample(train_.split, cfg_.batch, cfg_.seq, batch_gen_));
  return mb;
}

std::vector<data::Batch> Trainer::next_kl_batches() {
  std::vector<data::Batch> kb;
  for (int64_t k = 0; k < cfg_.grad_accum; ++k) kb.push_back(kl_.data->sample(kl_.split, cfg_.batch, cfg_.seq, kl_gen_));
  return kb;
}

double Trainer::validate_now() {
  const double loss = evaluate(model_, val_batches_);
  if (on_validation_) {
    nn::ModeScope eval_mode(model_, false);
    NoGradGuard no_grad;
    on_validation_(step_, loss);
  }
  return loss;
}

// Every generator whose position decides what comes next: the batches', and
// each dropout's (modules sharing one generator are listed once, by the first path).
std::vector<std::pair<std::string, Generator*>> Trainer::generators() {
  std::vector<std::pair<std::string, Generator*>> out = {{"batches", &batch_gen_}};
  if (kl_weight_ > 0) out.push_back({"kl", &kl_gen_});
  std::set<const Generator*> seen;
  for (const auto& [path, m] : model_.named_modules())
    if (auto* d = dynamic_cast<nn::Dropout*>(m.get()))
      if (d->gen && seen.insert(d->gen.get()).second) out.push_back({"dropout:" + path, d->gen.get()});
  return out;
}

TrainResult Trainer::fit() {
  const bool has_val = !val_batches_.empty(), has_old = !old_batches_.empty(), has_kl = kl_weight_ > 0;
  const int64_t eval_every = cfg_.eval_every > 0 ? cfg_.eval_every : std::max<int64_t>(1, cfg_.steps / 5);
  const int64_t tokens_per_step = cfg_.batch * cfg_.seq * cfg_.grad_accum;
  TrainResult res;
  if (!cfg_.out_dir.empty()) fs::create_directories(cfg_.out_dir);

  if (step_ == 0 && (has_val || has_old)) {  // the loss before training: what the adapter must improve on
    MetricsRow r;
    if (has_val) {
      r.val_loss = validate_now();
      best_val_ = r.val_loss;
      best_step_ = 0;
    }
    if (has_old) r.old_loss = evaluate(model_, old_batches_);
    metrics_.push_back(r);
  }
  for (const MetricsRow& r : metrics_)
    if (r.step == 0) res.val_loss_before = r.val_loss, res.old_loss_before = r.old_loss;
  if (has_val && step_ == 0) std::printf("step 0: validation loss %.4f nats/byte\n", res.val_loss_before);
  if (has_old && step_ == 0) std::printf("step 0: old-domain loss %.4f nats/byte\n", res.old_loss_before);
  if (has_kl && step_ == 0) {  // 0 while the adapter is a no-op (B = 0)
    res.kl_before = evaluate_kl_to_base(model_, kl_eval_batches_);
    std::printf("step 0: KL to the base %.4g nats/position\n", res.kl_before);
  }

  const int64_t first = step_;
  bool stop = cfg_.early_stop > 0 && evals_since_best_ >= cfg_.early_stop;
  Progress progress(std::max<int64_t>(1, cfg_.steps - first), tokens_per_step, cfg_.quiet, eval_every);
  model_.train();
  while (!stop && step_ < cfg_.steps) {
    schedule_.apply(opt_, step_);
    const std::vector<data::Batch> mb = next_micro_batches();
    KLTerm kl;
    if (has_kl) {
      kl.weight = kl_weight_;
      kl.batches = next_kl_batches();
    }
    MemoryUse before;
    weight_bytes(model_, before);
    const size_t opt_before = opt_.state_bytes();
    const size_t live_before = memory::live_bytes();
    memory::reset_peak();
    const auto t0 = std::chrono::steady_clock::now();
    const StepResult s = train_step(model_, opt_, mb, cfg_.clip_norm, kl);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const size_t peak = memory::peak_bytes();
    weight_bytes(model_, res.memory);
    res.memory.peak_total = std::max(res.memory.peak_total, peak);
    // What the step added on top of what stays: new gradients and new optimizer state are not activations.
    const size_t stays = live_before + (res.memory.gradients > before.gradients ? res.memory.gradients - before.gradients : 0) +
                         (opt_.state_bytes() - opt_before);
    if (peak > stays) res.memory.activations_peak = std::max(res.memory.activations_peak, peak - stays);
    stop_unless_finite(s, step_ + 1);
    ++step_;

    MetricsRow row;
    row.step = step_;
    row.train_loss = s.loss;
    row.lr = opt_.groups()[0].lr;
    row.tokens_per_s = dt > 0 ? static_cast<double>(tokens_per_step) / dt : NAN;
    row.grad_norm = s.grad_norm;
    row.kl = s.kl;
    res.last_train_loss = s.loss;
    char lr[32];
    std::snprintf(lr, sizeof lr, "lr %.1e", row.lr);
    progress.update(step_ - first, s.loss, cfg_.label.empty() ? lr : cfg_.label + "  " + lr);

    if (has_val && (step_ % eval_every == 0 || step_ == cfg_.steps)) {
      Progress::Paused pause(progress);
      row.val_loss = validate_now();
      if (std::isnan(best_val_) || row.val_loss < best_val_) {
        best_val_ = row.val_loss;
        best_step_ = step_;
        evals_since_best_ = 0;
      } else {
        ++evals_since_best_;
      }
      char line[128];
      std::snprintf(line, sizeof line, "step %lld: validation loss %.4f nats/byte%s", static_cast<long long>(step_),
                    row.val_loss, best_step_ == step_ ? " (best)" : "");
      progress.log(line);
      stop = cfg_.early_stop > 0 && evals_since_best_ >= cfg_.early_stop;
      if (stop)
        progress.log("early stop: no better validation loss in " + std::to_string(cfg_.early_stop) +
                     " evaluations (best " + std::to_string(best_val_) + " at step " + std::to_string(best_step_) +
                     ")");
    }
    if (has_old && (step_ % eval_every == 0 || step_ == cfg_.steps)) {
      Progress::Paused pause(progress);
      row.old_loss = evaluate(model_, old_batches_);
      char line[128];
      std::snprintf(line, sizeof line, "step %lld: old-domain loss %.4f nats/byte", static_cast<long long>(step_),
                    row.old_loss);
      std::string text = line;
      if (!std::isnan(res.old_loss_before)) {  // NaN: resumed from a run that did not track it
        std::snprintf(line, sizeof line, " (%+.4f since step 0)", row.old_loss - res.old_loss_before);
        text += line;
      }
      progress.log(text);
    }
    if (has_kl && (step_ % eval_every == 0 || step_ == cfg_.steps)) {
      Progress::Paused pause(progress);
      char line[128];
      std::snprintf(line, sizeof line, "step %lld: KL to the base %.4g nats/position (this step's batches)",
                    static_cast<long long>(step_), row.kl);
      progress.log(line);
    }
    metrics_.push_back(row);
    if (cfg_.save_every > 0 && step_ % cfg_.save_every == 0) {
      Progress::Paused pause(progress);
      save_checkpoint();
    } else if (!std::isnan(row.val_loss) || !std::isnan(row.old_loss)) {
      write_metrics();
    }
  }
  progress.finish();
  model_.eval();
  write_metrics();

  res.memory.optimizer_state = opt_.state_bytes();
  res.steps_done = step_;
  res.stopped_early = stop && step_ < cfg_.steps;
  res.best_val_loss = best_val_;
  res.best_step = best_step_;
  for (const MetricsRow& r : metrics_) {
    if (!std::isnan(r.val_loss) && r.step == step_) res.final_val_loss = r.val_loss;
    if (!std::isnan(r.old_loss) && r.step == step_) res.final_old_loss = r.old_loss;
  }
  if (has_val && std::isnan(res.final_val_loss)) res.final_val_loss = validate_now();  // resumed past the end
  if (has_old && std::isnan(res.final_old_loss)) res.final_old_loss = evaluate(model_, old_batches_);
  if (has_kl) res.kl_after = evaluate_kl_to_base(model_, kl_eval_batches_);
  res.train_s = progress.train_s();
  res.steps_per_s = progress.steps_per_s();
  res.tokens_per_s = progress.tokens_per_s();
  res.metrics = metrics_;
  return res;
}

void Trainer::write_metrics() const {
  if (cfg_.out_dir.empty()) return;
  write_file_atomically((fs::path(cfg_.out_dir) / kMetricsFile).string(), metrics_csv(metrics_), "metrics");
}

// ============================ checkpoints ============================

void Trainer::save_checkpoint() {
  if (!output_.save) throw ValueError("Trainer: save_every needs an Output::save");
  const std::string dir = (fs::path(cfg_.out_dir) / checkpoint_name(step_)).string();
  const std::string staged = temporary_path(dir);
  remove_stale_temporaries(dir);
  fs::remove_all(staged);
  try {
    output_.save(staged);  // creates the directory with the model's part
    fs::create_directories(staged);
    opt_.save((fs::path(staged) / kOptimizerFile).string());
    json state;
    state["format"] = kStateFormat;
    state["step"] = step_;
    state["identity"] = identity_;
    state["generators"] = json::object();
    for (const auto& [name, gen] : generators())
      state["generators"][name] = {{"seed", gen->seed()}, {"offset", gen->offset()}};
    state["best_val_loss"] = std::isnan(best_val_) ? json(nullptr) : json(best_val_);
    state["best_step"] = best_step_;
    state["evals_since_best"] = evals_since_best_;
    write_file_atomically((fs::path(staged) / kStateFile).string(), state.dump(2) + "\n", "save_checkpoint");
    write_file_atomically((fs::path(staged) / kMetricsFile).string(), metrics_csv(metrics_), "save_checkpoint");
    sync_directory(staged);
    replace_directory(staged, dir, "save_checkpoint");
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staged, ignored);
    throw;
  }
  write_metrics();
}

void Trainer::resume(const std::string& dir) {
  const std::string where = "resume " + dir;
  refuse_temporary_path(dir, "resume");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw IOError(where + ": not a directory (expected OUT/checkpoint-STEP)");
  const std::string state_path = (fs::path(dir) / kStateFile).string();
  json state;
  try {
    state = json::parse(read_file(state_path));
  } catch (const json::exception& e) {
    throw IOError(state_path + ": invalid JSON: " + printable(e.what()));
  }
  if (!state.is_object() || state.value("format", "") != kStateFormat || !state.contains("step") ||
      !state["step"].is_number_integer() || !state.contains("identity") || !state.contains("generators") ||
      !state["generators"].is_object())
    throw IOError(state_path + ": not a loragrad trainer state (format " + kStateFormat + ")");

  // The checkpoint must belong to a run this one can continue.
  std::vector<std::string> diffs;
  const json& theirs = state["identity"];
  for (const auto& [key, mine] : identity_.items()) {
    const json other = theirs.contains(key) ? theirs[key] : json(nullptr);
    if (other != mine) diffs.push_back(key + ": checkpoint " + printable(other.dump()) + ", now " + mine.dump());
  }
  // And settings the checkpoint's run had and this one lacks (a KL weight
  // resumed without one): keys only set when used.
  if (theirs.is_object())
    for (const auto& [key, other] : theirs.items())
      if (!identity_.contains(key))
        diffs.push_back(printable(key) + ": checkpoint " + printable(other.dump()) + ", now null");
  if (!diffs.empty()) {
    std::string msg = where + ": the checkpoint is of another run (";
    for (size_t i = 0; i < diffs.size(); ++i) msg += (i ? "; " : "") + diffs[i];
    throw IOError(msg + "); resume with the flags it was trained with");
  }
  const int64_t step = state["step"].get<int64_t>();
  if (step < 0 || step > cfg_.steps)
    throw IOError(where + ": checkpoint step " + std::to_string(step) + " is outside [0, --steps " +
                  std::to_string(cfg_.steps) + "]");

  // Check every generator before changing anything.
  auto gens = generators();
  for (const auto& [name, gen] : gens) {
    const json& g = state["generators"];
    if (!g.contains(name) || !g[name].is_object() || !g[name].contains("offset") ||
        !g[name]["offset"].is_number_unsigned() || g[name].value("seed", uint64_t{0}) != gen->seed())
      throw IOError(state_path + ": generator '" + name + "' is missing or has another seed");
  }
  if (!output_.load) throw ValueError("Trainer: resume needs an Output::load");
  output_.load(dir);
  opt_.load((fs::path(dir) / kOptimizerFile).string());
  for (const auto& [name, gen] : gens) gen->set_offset(state["generators"][name]["offset"].get<uint64_t>());
  step_ = step;
  resumed_ = true;
  best_val_ = state["best_val_loss"].is_number() ? state["best_val_loss"].get<double>() : NAN;
  best_step_ = state.value("best_step", int64_t{-1});
  evals_since_best_ = state.value("evals_since_best", int64_t{0});
  metrics_ = parse_metrics_csv(read_file((fs::path(dir) / kMetricsFile).string()), dir);
}

}  // namespace loragrad::train
