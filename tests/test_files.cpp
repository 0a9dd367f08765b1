// Crash-safe writes (files.hpp): an adapter directory never vanishes, killed
// writers' temporaries are cleaned up and never loaded; printable() messages.
#define BOOST_TEST_MODULE files
#include <boost/test/unit_test.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "loragrad/error.hpp"
#include "loragrad/files.hpp"
#include "loragrad/lora/inject.hpp"
#include "loragrad/lora/peft_io.hpp"
#include "loragrad/nn/tiny_gpt.hpp"
#include "loragrad/safetensors.hpp"
#include "test_util.hpp"

using namespace loragrad;
namespace fs = std::filesystem;

namespace {



// A directory holding one file "version" with the given text.
void make_version_dir(const fs::path& d, const std::string& text) {
  fs::create_directories(d);
  write_bytes(d / "version", text);
}

// A pid that is certainly not running: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

// Runs f in a child process that is "killed" (_exit) at replace_directory's step `kill_at`.
const char* g_kill_at = nullptr;
void kill_hook(const char* step) {
  if (std::strcmp(step, g_kill_at) == 0) ::_exit(9);
}
template <class F>
int in_child_killed_at(const char* step, F f) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    g_kill_at = step;
    testing::file_step_hook = kill_hook;
    try {
      f();
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::shared_ptr<nn::TinyGPT> tiny() {
  nn::TinyGPTConfig c;
  c.vocab_size = 32;
  c.block_size = 8;
  c.d_model = 8;
  c.n_layer = 1;
  c.n_head = 2;
  return std::make_shared<nn::TinyGPT>(c);
}

}  // namespace

BOOST_AUTO_TEST_CASE(temporary_names_are_recognised_and_refused) {
  BOOST_TEST(is_temporary_path("out/adapter.tmp.1234"));
  BOOST_TEST(is_temporary_path("out/adapter.old.77/adapter_model.safetensors"));
  BOOST_TEST(is_temporary_path("model.safetensors.tmp.5"));
  BOOST_TEST(!is_temporary_path("out/adapter"));
  BOOST_TEST(!is_temporary_path("model.tmp"));
  BOOST_TEST(!is_temporary_path("v1.2/model.safetensors"));
  BOOST_TEST(!is_temporary_path(".tmp.5"));

  // A complete leftover is still refused by the loaders.
  TempDir tmp;
  const std::string good = tmp.file("m.safetensors");
  save_safetensors(good, {{"x", zeros({2})}});
  const std::string leftover = good + ".tmp.4242";
  fs::copy_file(good, leftover);
  check_throws<IOError>([&] { load_safetensors(leftover); }, {"load_safetensors", leftover, "interrupted write"});

  auto model = tiny();
  lora::LoraConfig cfg;
  cfg.target_modules = {"q_proj"};
  lora::apply_lora(*model, cfg);
  lora::save_adapter(*model, tmp.file("ad"));
  fs::copy(tmp.file("ad"), tmp.file("ad.tmp.4242"));
  check_throws<IOError>([&] { lora::load_adapter(*tiny(), tmp.file("ad.tmp.4242")); },
                        {"load_adapter", "ad.tmp.4242", "interrupted write"});
}

// Defect 4: killed writes left *.tmp.<pid> files and directories forever.
BOOST_AUTO_TEST_CASE(stale_temporaries_of_dead_writers_are_removed_on_the_next_write) {
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  const std::string dead = std::to_string(dead_pid());
  write_bytes(path + ".tmp." + dead, "half a file");
  write_bytes(path + ".tmp.1", "pid 1 is alive: not ours to remove");
  write_bytes(tmp.file("other.safetensors.tmp." + dead), "another file's temporary: left alone");
  save_safetensors(path, {{"x", zeros({3})}});
  BOOST_TEST(!fs::exists(path + ".tmp." + dead));
  BOOST_TEST(fs::exists(path + ".tmp.1"));
  BOOST_TEST(fs::exists(tmp.file("other.safetensors.tmp." + dead)));
  BOOST_TEST(load_safetensors(path).at("x").numel() == 3);

  // The same for adapter directories and text files.
  const std::string ad = tmp.file("ad");
  make_version_dir(ad + ".tmp." + dead, "partial");
  auto model = tiny();
  lora::LoraConfig cfg;
  cfg.target_modules = {"q_proj"};
  lora::apply_lora(*model, cfg);
  lora::save_adapter(*model, ad);
  BOOST_TEST(!fs::exists(ad + ".tmp." + dead));
  make_version_dir(ad + ".old." + dead, "an old version whose replacement finished");
  lora::save_adapter(*model, ad, "default", /*overwrite=*/true);
  BOOST_TEST(!fs::exists(ad + ".old." + dead));
  const std::string txt = tmp.file("notes.txt");
  write_bytes(txt + ".tmp." + dead, "partial");
  write_file_atomically(txt, "done", "test");
  BOOST_TEST(!fs::exists(txt + ".tmp." + dead));
  BOOST_TEST(read_bytes(txt) == "done");
}

// Defect 3: at every instant DIR holds the complete old or the complete new
// version, whether the writer is killed (a child _exits at each step) or hits
// an I/O error (the hook throws), with RENAME_EXCHANGE and without it.
BOOST_AUTO_TEST_CASE(replace_directory_never_loses_the_directory) {
  for (bool fallback : {false, true}) {
    BOOST_TEST_CONTEXT("rename fallback " << fallback) {
      for (const char* step : {"staged", "swapped", "moved-old-aside"}) {
        BOOST_TEST_CONTEXT("killed at " << step) {
          TempDir tmp;
          const std::string dir = tmp.file("adapter");
          make_version_dir(dir, "old");
          const int status = in_child_killed_at(step, [&] {
            testing::force_rename_fallback = fallback;
            const std::string staged = temporary_path(dir);
            make_version_dir(staged, "new");
            replace_directory(staged, dir, "test");
          });
          const bool step_runs = std::strcmp(step, "staged") == 0 || (std::strcmp(step, "swapped") == 0) != fallback;
          BOOST_TEST(status == (step_runs ? 9 : 0));
          // What a reader sees right after the kill: a complete version. Only
          // without RENAME_EXCHANGE is there a window with DIR missing; then the
          // previous version waits as DIR.old.<pid> and is put back first thing.
          if (fallback && std::strcmp(step, "moved-old-aside") == 0) {
            BOOST_TEST(!fs::exists(dir));
            remove_stale_temporaries(dir);
          }
          BOOST_REQUIRE(fs::exists(fs::path(dir) / "version"));
          const std::string seen = read_bytes(fs::path(dir) / "version");
          BOOST_TEST((seen == "old" || seen == "new"));
          // The next writer cleans up after the dead one and leaves only DIR.
          testing::force_rename_fallback = fallback;
          const std::string staged = temporary_path(dir);
          make_version_dir(staged, "newer");
          replace_directory(staged, dir, "test");
          testing::force_rename_fallback = false;
          BOOST_TEST(read_bytes(fs::path(dir) / "version") == "newer");
          BOOST_TEST(tmp.listing() == std::vector<std::string>{"adapter"});
        }
      }
      // Without RENAME_EXCHANGE the window between the renames is repaired:
      // DIR gone, DIR.old.<dead pid> present -> the next writer puts it back first.
      TempDir tmp;
      const std::string dir = tmp.file("adapter");
      make_version_dir(dir + ".old." + std::to_string(dead_pid()), "old");
      remove_stale_temporaries(dir);
      BOOST_TEST(read_bytes(fs::path(dir) / "version") == "old");
    }
  }
}

BOOST_AUTO_TEST_CASE(an_error_while_replacing_keeps_the_old_directory) {
  for (bool fallback : {false, true}) {
    for (const char* step : {"staged", "moved-old-aside"}) {
      TempDir tmp;
      const std::string dir = tmp.file("adapter");
      make_version_dir(dir, "old");
      const std::string staged = temporary_path(dir);
      make_version_dir(staged, "new");
      g_kill_at = step;
      testing::force_rename_fallback = fallback;
      testing::file_step_hook = [](const char* s) {
        if (std::strcmp(s, g_kill_at) == 0) throw IOError("simulated EIO at " + std::string(s));
      };
      bool threw = false;
      try {
        replace_directory(staged, dir, "test");
      } catch (const IOError&) {
        threw = true;
      }
      testing::file_step_hook = nullptr;
      testing::force_rename_fallback = false;
      const bool step_runs = std::strcmp(step, "staged") == 0 || fallback;
      BOOST_TEST(threw == step_runs);
      BOOST_TEST(read_bytes(fs::path(dir) / "version") == (step_runs ? "old" : "new"));
      fs::remove_all(staged);
      BOOST_TEST(tmp.listing() == std::vector<std::string>{"adapter"});
    }
  }
  // A real failure: the staged directory does not exist. The old one stays.
  TempDir tmp;
  const std::string dir = tmp.file("adapter");
  make_version_dir(dir, "old");
  check_throws<IOError>([&] { replace_directory(tmp.file("nothing"), dir, "save_adapter"); },
                        {"save_adapter", dir});
  BOOST_TEST(read_bytes(fs::path(dir) / "version") == "old");
}

// The whole save_adapter path over an existing adapter, killed at each step.
BOOST_AUTO_TEST_CASE(save_adapter_over_an_adapter_killed_at_any_step) {
  TempDir tmp;
  const std::string dir = tmp.file("ad");
  auto model = tiny();
  lora::LoraConfig cfg;
  cfg.target_modules = {"q_proj"};
  lora::apply_lora(*model, cfg);
  lora::save_adapter(*model, dir);
  const std::string before = read_bytes(fs::path(dir) / "adapter_model.safetensors");
  cfg.r = 4;  // a visibly different adapter
  auto other = tiny();
  lora::apply_lora(*other, cfg);
  for (const char* step : {"staged", "swapped"}) {
    in_child_killed_at(step, [&] { lora::save_adapter(*other, dir, "default", /*overwrite=*/true); });
    auto fresh = tiny();
    lora::load_adapter(*fresh, dir);  // complete: old (r 8) or new (r 4)
    const int64_t r = lora::read_adapter_config((fs::path(dir) / "adapter_config.json").string()).r;
    BOOST_TEST((r == 8 || r == 4));
  }
  lora::save_adapter(*model, dir, "default", true);
  BOOST_TEST(read_bytes(fs::path(dir) / "adapter_model.safetensors") == before);
  BOOST_TEST(tmp.listing() == std::vector<std::string>{"ad"});
}

BOOST_AUTO_TEST_CASE(write_file_atomically_names_the_path_on_error) {
  TempDir tmp;
  check_throws<IOError>([&] { write_file_atomically(tmp.file("no/such/dir/f.json"), "x", "write_adapter_config"); },
                        {"write_adapter_config", "no/such/dir/f.json.tmp."});
  write_file_atomically(tmp.file("f.json"), "one", "t");
  write_file_atomically(tmp.file("f.json"), "two", "t");
  BOOST_TEST(read_bytes(tmp.file("f.json")) == "two");
  BOOST_TEST(tmp.listing() == std::vector<std::string>{"f.json"});
}

// Defect 6: file text in messages is escaped, valid UTF-8 kept.
BOOST_AUTO_TEST_CASE(printable_escapes_control_bytes_and_invalid_utf8) {
  BOOST_TEST(printable("q_proj") == "q_proj");
  BOOST_TEST(printable("caf\xc3\xa9 \xe2\x82\xac") == "caf\xc3\xa9 \xe2\x82\xac");          // é €: valid
  BOOST_TEST(printable("\x1b[2J\n") == "\\x1b[2J\\x0a");                                   // terminal escape
  BOOST_TEST(printable("a\xff\xc3") == "a\\xff\\xc3");                                     // invalid, truncated
  BOOST_TEST(printable("\xc0\xaf") == "\\xc0\\xaf");                                       // overlong '/'
  BOOST_TEST(printable("\xed\xa0\x80") == "\\xed\\xa0\\x80");                              // a surrogate
  BOOST_TEST(printable(std::string("a\0b", 3)) == "a\\x00b");
}
