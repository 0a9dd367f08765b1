// Pretrains a TinyGPT on a built-in corpus: the base model that the LoRA
// examples adapt later.
//
//   pretrain                       the full run (stories; 1-2.5 minutes on 2 shared cores)
//   pretrain --domain code --steps 300 --out /tmp/run
//   pretrain --quick               a seconds-long smoke run (what ctest runs)
//
// What it does, in order: generate the corpus and split it 90/10, print the
// unigram baseline (the loss of predicting every byte from byte frequencies
// alone), train with AdamW + cosine schedule with warm-up + gradient clipping
// at 1.0 while printing the validation loss, then save the checkpoint and
// sample some text.
//
// Exit status: 0 when the final validation loss is below the unigram baseline,
// 1 when it is not (or on a runtime error), 2 on a bad command line.
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "loragrad/parallel.hpp"
#include "loragrad/data/byte_dataset.hpp"
#include "loragrad/data/corpus.hpp"
#include "loragrad/error.hpp"
#include "loragrad/nn/progress.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/nn/train_loop.hpp"
#include "loragrad/optim/optim.hpp"

using namespace loragrad;
using namespace loragrad::nn;

namespace {

struct Options {
  Domain domain = Domain::stories;
  int64_t steps = 600;
  int64_t batch = 16;
  int64_t seq = 128;
  int64_t d_model = 128;
  int64_t layers = 4;
  int64_t heads = 4;
  double lr = 3e-3;
  uint64_t seed = 0;
  int64_t threads = 0;  // 0: OpenMP's default
  std::string out = "out";
  bool quiet = false;
  int64_t eval_every = 0;  // 0: ten evaluations per run
  int64_t eval_batches = 8;
  int64_t corpus_bytes = 2 << 20;
  std::string prompt;  // empty: the domain's usual opening
};

// A tiny model and run that still learns something: for ctest and quick checks.
void apply_quick(Options& o) {
  o.steps = 200;
  o.batch = 16;
  o.seq = 64;
  o.d_model = 64;
  o.layers = 2;
  o.heads = 2;
  o.lr = 5e-3;
  o.eval_batches = 2;
  o.corpus_bytes = 256 << 10;
}

const char* kUsage =
    "usage: pretrain [flags]\n"
    "  --domain NAME      stories | recipes | code (default stories)\n"
    "  --steps N          optimizer steps (default 600)\n"
    "  --batch N          sequences per step (default 16)\n"
    "  --seq N            bytes per sequence = the model's block size (default 128)\n"
    "  --d-model N        residual width (default 128)\n"
    "  --layers N         transformer blocks (default 4)\n"
    "  --heads N          attention heads, divides d-model (default 4)\n"
    "  --lr X             peak learning rate (default 3e-3)\n"
    "  --seed N           corpus, initial weights, batches and sampling (default 0)\n"
    "  --threads N        OpenMP threads (default: OpenMP's choice)\n"
    "  --out DIR          where the checkpoint goes (default out)\n"
    "  --eval-every N     steps between validation losses (default steps / 10)\n"
    "  --eval-batches N   fixed validation batches per evaluation (default 8)\n"
    "  --corpus-bytes N   size of the generated corpus (default 2097152)\n"
    "  --prompt TEXT      start of the sampled text (default: the domain's usual opening)\n"
    "  --quiet            no live progress bar, plain log lines\n"
    "  --quick            a seconds-long smoke run (d-model 64, 2 layers, 200 steps); other flags override it\n"
    "  --help             this text\n";

// A command-line mistake: reported as one line, exit status 2.
struct UsageError {
  std::string message;
};

int64_t parse_int(const std::string& flag, const std::string& s, int64_t lo, int64_t hi) {
  size_t used = 0;
  long long v = 0;
  bool too_big = false;
  try {
    v = std::stoll(s, &used);
  } catch (const std::out_of_range&) {
    too_big = true;
  } catch (const std::exception&) {
    used = 0;
  }
  if (!too_big && (s.empty() || used != s.size())) throw UsageError{flag + " expects an integer, got '" + s + "'"};
  if (too_big || v < lo || v > hi)
    throw UsageError{flag + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + s};
  return v;
}

double parse_positive_real(const std::string& flag, const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (s.empty() || used != s.size()) throw UsageError{flag + " expects a number, got '" + s + "'"};
  if (!(v > 0) || !std::isfinite(v)) throw UsageError{flag + " must be a positive finite number, got " + s};
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  // --quick is a preset: apply it first so that every explicit flag wins, wherever it stands.
  for (const std::string& a : args)
    if (a == "--quick") apply_quick(o);

  constexpr int64_t kBig = 1000000000;
  using Setter = std::function<void(const std::string& flag, const std::string& value)>;
  const std::map<std::string, Setter> with_value = {
      {"--domain",
       [&](auto& f, auto& v) {
         if (v != "stories" && v != "recipes" && v != "code")
           throw UsageError{f + " must be stories, recipes or code, got '" + v + "'"};
         o.domain = parse_domain(v);
       }},
      {"--steps", [&](auto& f, auto& v) { o.steps = parse_int(f, v, 1, kBig); }},
      {"--batch", [&](auto& f, auto& v) { o.batch = parse_int(f, v, 1, 1 << 16); }},
      {"--seq", [&](auto& f, auto& v) { o.seq = parse_int(f, v, 1, 1 << 16); }},
      {"--d-model", [&](auto& f, auto& v) { o.d_model = parse_int(f, v, 1, 1 << 16); }},
      {"--layers", [&](auto& f, auto& v) { o.layers = parse_int(f, v, 1, 1024); }},
      {"--heads", [&](auto& f, auto& v) { o.heads = parse_int(f, v, 1, 1 << 16); }},
      {"--lr", [&](auto& f, auto& v) { o.lr = parse_positive_real(f, v); }},
      {"--seed",
       [&](auto& f, auto& v) {
         o.seed = static_cast<uint64_t>(parse_int(f, v, 0, std::numeric_limits<int64_t>::max()));
       }},
      {"--threads", [&](auto& f, auto& v) { o.threads = parse_int(f, v, 1, 1024); }},
      {"--out",
       [&](auto& f, auto& v) {
         if (v.empty()) throw UsageError{f + " expects a directory, got ''"};
         o.out = v;
       }},
      {"--eval-every", [&](auto& f, auto& v) { o.eval_every = parse_int(f, v, 1, kBig); }},
      {"--eval-batches", [&](auto& f, auto& v) { o.eval_batches = parse_int(f, v, 1, 1 << 16); }},
      {"--corpus-bytes", [&](auto& f, auto& v) { o.corpus_bytes = parse_int(f, v, 1024, int64_t{1} << 32); }},
      {"--prompt",
       [&](auto& f, auto& v) {
         if (v.empty()) throw UsageError{f + " expects some text, got ''"};
         o.prompt = v;
       }},
  };

  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i], value;
    bool has_value = false;
    if (const size_t eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);  // --steps=30
      flag = flag.substr(0, eq);
      has_value = true;
    }
    if (flag == "--quick" || flag == "--quiet" || flag == "--help") {
      if (has_value) throw UsageError{flag + " takes no value"};
      if (flag == "--quiet") o.quiet = true;
      if (flag == "--help") {
        std::cout << kUsage;
        std::exit(0);
      }
      continue;
    }
    if (flag.rfind("--", 0) != 0)
      throw UsageError{"unexpected argument '" + flag + "' (flags start with --; see --help)"};
    const auto it = with_value.find(flag);
    if (it == with_value.end()) throw UsageError{"unknown flag '" + flag + "' (see --help)"};
    if (!has_value) {
      // "--steps --quiet" is a missing value, not the value "--quiet".
      if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0) throw UsageError{flag + " expects a value"};
      value = args[++i];
    }
    it->second(flag, value);
  }

  if (o.d_model % o.heads != 0)
    throw UsageError{"--heads " + std::to_string(o.heads) + " must divide --d-model " + std::to_string(o.d_model)};
  // Sampling windows must fit in both splits (the validation split is a tenth of the corpus).
  if (o.seq + 1 > o.corpus_bytes / 10)
    throw UsageError{"--seq " + std::to_string(o.seq) + " is too long for --corpus-bytes " +
                     std::to_string(o.corpus_bytes) + " (the validation tenth must hold seq + 1 bytes)"};
  return o;
}

const char* default_prompt(Domain d) {
  switch (d) {
    case Domain::stories: return "Once upon a time";
    case Domain::recipes: return "Recipe: ";
    case Domain::code: return "def ";
  }
  return "";
}

// Bytes a terminal should not interpret (a byte model can emit any value) become '?'.
std::string printable(const std::string& s) {
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

int run(const Options& o) {
  if (o.threads > 0) omp_set_num_threads(static_cast<int>(o.threads));

  // ---- data ----
  ByteDataset data(builtin_corpus(o.domain, static_cast<size_t>(o.corpus_bytes), o.seed), 0.1);
  const double unigram = data.unigram_entropy(Split::validation);
  const double bigram = bigram_cross_entropy(data.bytes(Split::train), data.bytes(Split::validation));
  std::cout << "corpus: " << domain_name(o.domain) << ", " << data.size(Split::train) << " train + "
            << data.size(Split::validation) << " validation bytes (seed " << o.seed << ")\n"
            << "baselines on validation: unigram " << fixed(unigram, 3) << " nats/byte, bigram " << fixed(bigram, 3)
            << " nats/byte\n";

  // ---- model ----
  TinyGPTConfig cfg;
  cfg.block_size = o.seq;
  cfg.d_model = o.d_model;
  cfg.n_layer = o.layers;
  cfg.n_head = o.heads;
  cfg.seed = o.seed;
  auto model = std::make_shared<TinyGPT>(cfg);
  const int64_t tokens_per_step = o.batch * o.seq;
  std::cout << "model: TinyGPT d_model " << o.d_model << ", " << o.layers << " layers, " << o.heads << " heads, block "
            << o.seq << ": " << format_count(static_cast<double>(model->num_parameters())) << " parameters\n";

  // ---- optimizer: decay the matrices, not the biases and LayerNorm gains (as GPT-2 recipes do) ----
  std::vector<Tensor> decay, no_decay;
  for (const Tensor& p : model->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  AdamW opt({ParamGroup("decay", decay, o.lr, 0.1), ParamGroup("no_decay", no_decay, o.lr, 0.0)});
  const int64_t warmup = std::max<int64_t>(1, o.steps / 20);
  const LRSchedule schedule = LRSchedule::cosine(warmup, o.steps, 0.1);
  const double max_grad_norm = 1.0;
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::cout << "training: " << o.steps << " steps x " << o.batch << " x " << o.seq << " bytes, AdamW lr " << o.lr
            << " " << schedule.str() << ", clip " << max_grad_norm << ", " << omp_get_max_threads()
            << " threads (OMP_WAIT_POLICY=" << (wait_policy ? wait_policy : "unset") << ")\n";

  // ---- training ----
  const std::vector<Batch> val = fixed_batches(data, Split::validation, o.eval_batches, o.batch, o.seq, o.seed + 1);
  const int64_t eval_every = o.eval_every > 0 ? o.eval_every : std::max<int64_t>(1, o.steps / 10);
  Generator batch_gen(o.seed + 2);
  double val_loss = std::numeric_limits<double>::quiet_NaN();
  Progress progress(o.steps, tokens_per_step, o.quiet, eval_every);
  for (int64_t t = 0; t < o.steps; ++t) {
    schedule.apply(opt, t);
    const StepResult r = train_step(*model, opt, data.sample(Split::train, o.batch, o.seq, batch_gen), max_grad_norm);
    stop_unless_finite(r, t + 1);
    char lr[32];
    std::snprintf(lr, sizeof lr, "lr %.1e", opt.groups()[0].lr);
    progress.update(t + 1, r.loss, lr);
    if ((t + 1) % eval_every == 0 || t + 1 == o.steps) {
      Progress::Paused pause(progress);
      val_loss = evaluate(*model, val);
      progress.log("step " + std::to_string(t + 1) + ": validation loss " + fixed(val_loss, 4) + " nats/byte");
    }
  }
  progress.finish();
  const double train_s = progress.train_s();

  // ---- results ----
  std::cout << "final validation loss " << fixed(val_loss, 3) << " nats/byte vs unigram baseline " << fixed(unigram, 3)
            << " (" << fixed(unigram - val_loss, 3) << " below it)\n"
            << "speed: " << o.steps << " steps in " << fixed(train_s, 1) << " s of training = "
            << fixed(progress.steps_per_s(), 2) << " steps/s, " << format_count(progress.tokens_per_s())
            << " tokens/s (total " << fixed(progress.elapsed_s(), 1) << " s with evaluations)\n";

  std::filesystem::create_directories(o.out);
  const std::string path = (std::filesystem::path(o.out) / ("tinygpt_" + std::string(domain_name(o.domain)) +
                                                           ".safetensors")).string();
  model->save(path);
  std::cout << "checkpoint: " << path << "\n";

  const std::string prompt = o.prompt.empty() ? default_prompt(o.domain) : o.prompt;
  const double temperature = 0.8;
  const int64_t top_k = 40;
  std::cout << "sample (temperature " << temperature << ", top-k " << top_k << ", seed " << o.seed << "):\n"
            << printable(sample_text(*model, prompt, 200, temperature, top_k, o.seed)) << "\n";

  if (!(val_loss < unigram)) {
    std::cerr << "pretrain: the validation loss is not below the unigram baseline: training failed\n";
    return 1;
  }
  return 0;
}


}  // namespace

int main(int argc, char** argv) {
  loragrad::prefer_passive_openmp_threads(argv);  // see parallel.hpp
  Options options;
  try {
    options = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "pretrain: " << e.message << "\n";
    return 2;
  }
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::cerr << "pretrain: error: " << e.what() << "\n";
    return 1;
  }
}
