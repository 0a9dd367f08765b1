// Replays inputs through a harness without libFuzzer, for ctest (no clang
// needed): every file named, and every file under each directory named
// (sorted), once each. Each input runs in a child process, so one crash does
// not hide the others, with libFuzzer-like limits: 10 s per input and, outside
// ASan (which reserves terabytes of address space), 4 GiB of memory. Exit
// status 1 if any input crashed, hung, or exceeded the limits.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

#if defined(__SANITIZE_ADDRESS__)
#define REPLAY_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define REPLAY_ASAN 1
#endif
#endif

static void run_one(const std::string& path) {
  alarm(10);
#ifndef REPLAY_ASAN
  const rlim_t limit = rlim_t(4) << 30;
  const rlimit rl{limit, limit};
  setrlimit(RLIMIT_AS, &rl);
#endif
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.is_open() || in.bad()) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  std::exit(0);  // exit, not _exit: static destructors and LeakSanitizer run
}

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    if (!fs::is_directory(argv[i])) {
      files.push_back(argv[i]);
      continue;
    }
    std::vector<std::string> found;
    for (const auto& e : fs::recursive_directory_iterator(argv[i]))
      if (e.is_regular_file()) found.push_back(e.path().string());
    std::sort(found.begin(), found.end());
    files.insert(files.end(), found.begin(), found.end());
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s FILE_OR_DIR...   (no inputs found)\n", argv[0]);
    return 2;
  }
  // The harnesses' scratch dirs go in here, so that crashed children leave nothing behind.
  const char* base = std::getenv("TMPDIR");
  std::string scratch = std::string(base && *base ? base : "/tmp") + "/loragrad-replay-XXXXXX";
  if (!mkdtemp(scratch.data())) {
    std::perror("mkdtemp");
    return 2;
  }
  setenv("TMPDIR", scratch.c_str(), 1);

  int failed = 0;
  for (const std::string& f : files) {
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      std::perror("fork");
      return 2;
    }
    if (pid == 0) run_one(f);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    ++failed;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
      std::fprintf(stderr, "FAILED %s: hang (still running after 10 s)\n", f.c_str());
    else if (WIFSIGNALED(status))
      std::fprintf(stderr, "FAILED %s: signal %d (%s)\n", f.c_str(), WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
      std::fprintf(stderr, "FAILED %s: exit status %d\n", f.c_str(), WEXITSTATUS(status));
  }
  std::error_code ignored;
  fs::remove_all(scratch, ignored);
  std::printf("replayed %zu inputs: %zu passed, %d failed\n", files.size(), files.size() - failed, failed);
  return failed ? 1 : 0;
}
