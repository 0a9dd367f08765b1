#include "common.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "loragrad/error.hpp"
#include "loragrad/files.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/thread_pool.hpp"

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

void check_adapter_dir(const std::string& path, const std::string& flag) {
  check_dir(path, flag);
  std::error_code ec;
  if (fs::exists(fs::path(path) / "adapter_config.json", ec)) return;
  std::vector<std::string> named;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_directory(ec) && fs::exists(it->path() / "adapter_config.json", ec) &&
        it->path().filename().string().rfind("checkpoint-", 0) != 0)
      named.push_back(it->path().filename().string());
  if (named.empty()) return;  // load_adapter says what is missing
  std::sort(named.begin(), named.end());
  std::string list;
  for (const std::string& n : named) list += (list.empty() ? "'" : ", '") + printable(n) + "'";
  throw IOError(flag + " " + path + ": no adapter_config.json here, but it holds the named adapter" +
                (named.size() > 1 ? "s " : " ") + list + " (finetune --adapter-name); pass " + flag + " " +
                (fs::path(path) / named.front()).string());
}

std::shared_ptr<nn::TinyGPT> load_checkpoint(const std::string& path) {
  check_file(path, "--base");
  auto model = nn::TinyGPT::load(path);
  model->eval();
  return model;
}

// An adapter records its base's fingerprint; on another base it may still
// load (shapes can fit) but its numbers mean something else: say so on stderr.
void warn_if_trained_on_another_base(const std::string& ours, const std::string& base_path, const std::string& dir) {
  const lora::LoraConfig cfg = lora::read_adapter_config((fs::path(dir) / "adapter_config.json").string());
  if (cfg.base_fingerprint.empty() || cfg.base_fingerprint == ours) return;
  std::cerr << "loragrad: warning: adapter " << dir << " was trained on base "
            << (cfg.base_model_name_or_path.empty() ? "?" : printable(cfg.base_model_name_or_path)) << " ("
            << cfg.base_fingerprint << "), not on " << base_path << " (" << ours << ")\n";
}

std::shared_ptr<nn::TinyGPT> load_model(const Args& a) {
  auto model = load_checkpoint(a.str("--base"));
  if (a.given("--adapter")) {
    const std::string dir = a.str("--adapter");
    check_adapter_dir(dir, "--adapter");
    const std::string base_fingerprint = nn::fingerprint(model->state_dict());
    lora::load_adapter(*model, dir, "default", /*is_trainable=*/false);
    warn_if_trained_on_another_base(base_fingerprint, a.str("--base"), dir);
    model->eval();
  }
  return model;
}

void set_threads(const Args& a) {
  if (!a.given("--threads")) return;
  const int64_t n = a.integer("--threads", 0, 1024);
  if (n > 0) set_num_threads(static_cast<int>(n));
}

std::string terminal_safe(const std::string& s) {
  std::string out = s;
  for (char& c : out) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u != '\n' && u != '\t' && (u < 0x20 || u > 0x7e)) c = '?';
  }
  return out;
}

}  // namespace loragrad::cli
