// Crash-safe writes: temporaries, atomic renames, cleanup of what dead writers left.
#include "loragrad/files.hpp"

#include <fcntl.h>
#include <linux/fs.h>  // RENAME_EXCHANGE
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "file_util.hpp"
#include "loragrad/error.hpp"

namespace loragrad {

namespace fs = std::filesystem;

namespace testing {
void (*file_step_hook)(const char* step) = nullptr;
bool force_rename_fallback = false;
}  // namespace testing

static void step(const char* name) {
  if (testing::file_step_hook) testing::file_step_hook(name);
}

static std::string errno_text() { return std::strerror(errno); }

std::string temporary_path(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

// "<stem>.tmp.<digits>" / "<stem>.old.<digits>": the pid, or -1.
static long scratch_pid(const std::string& name, std::string* stem = nullptr) {
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos || dot + 1 == name.size() || dot + 1 + 9 < name.size()) return -1;
  for (size_t i = dot + 1; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return -1;
  for (const char* kind : {".tmp", ".old"}) {
    if (dot >= 4 && name.compare(dot - 4, 4, kind) == 0 && dot > 4) {
      if (stem) *stem = name.substr(0, dot - 4);
      return std::stol(name.substr(dot + 1));
    }
  }
  return -1;
}

bool is_temporary_path(const std::string& path) {
  for (const auto& part : fs::path(path))
    if (scratch_pid(part.string()) >= 0) return true;
  return false;
}

void refuse_temporary_path(const std::string& path, const std::string& op) {
  if (is_temporary_path(path))
    throw IOError(op + ": '" + path + "' is a temporary left by an interrupted write (<name>.tmp.<pid> or "
                  "<name>.old.<pid>), not a finished file; use the path without that suffix");
}

static bool process_is_gone(long pid) {
  if (pid <= 0 || pid == ::getpid()) return false;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

void remove_stale_temporaries(const std::string& path) {
  const fs::path target(path);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string base = target.filename().string();
  if (base.empty()) return;
  std::error_code ec;
  fs::directory_iterator it(parent, ec), end;
  if (ec) return;  // nothing to clean (or not readable): the write itself will report real problems
  for (; it != end; it.increment(ec)) {
    if (ec) return;
    std::string stem;
    const std::string name = it->path().filename().string();
    const long pid = scratch_pid(name, &stem);
    if (stem != base || !process_is_gone(pid)) continue;
    const bool is_old = name.compare(name.rfind('.') - 4, 4, ".old") == 0;
    std::error_code ignored;
    if (is_old && !fs::exists(target, ignored)) {
      fs::rename(it->path(), target, ignored);  // an interrupted replace: put the previous version back
      if (!ignored) continue;
    }
    fs::remove_all(it->path(), ignored);
  }
}

void sync_directory(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

namespace detail {

std::string parent_of(const std::string& path) {
  const fs::path p(path);
  return p.has_parent_path() ? p.parent_path().string() : ".";
}

bool write_all(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t put = ::write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) return false;
    p += put;
    n -= static_cast<size_t>(put);
  }
  return true;
}

}  // namespace detail

using detail::parent_of;
using detail::write_all;

void write_file_atomically(const std::string& path, const std::string& bytes, const std::string& op) {
  remove_stale_temporaries(path);
  const std::string tmp = temporary_path(path);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw IOError(op + ": cannot create '" + tmp + "': " + errno_text());
  auto abandon = [&](const std::string& what) {
    const std::string reason = what + ": " + errno_text();
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw IOError(op + ": '" + path + "': " + reason);
  };
  if (!write_all(fd, bytes.data(), bytes.size())) abandon("write failed");
  if (::fsync(fd) != 0) abandon("fsync failed");
  const int rc = ::close(fd);
  fd = -1;
  if (rc != 0) abandon("close failed");
  if (::rename(tmp.c_str(), path.c_str()) != 0) abandon("cannot rename '" + tmp + "' over it");
  sync_directory(parent_of(path));
}

static bool exchange(const std::string& a, const std::string& b) {
  if (testing::force_rename_fallback) {
    errno = EINVAL;
    return false;
  }
  return ::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0;
}

void replace_directory(const std::string& staged, const std::string& dir, const std::string& op) {
  const auto fail = [&](const std::string& what) {
    const std::string reason = what + ": " + errno_text();
    std::error_code ignored;
    fs::remove_all(staged, ignored);
    throw IOError(op + ": '" + dir + "': " + reason);
  };
  remove_stale_temporaries(dir);  // including a previous version a killed writer left aside
  step("staged");
  std::error_code ec;
  if (!fs::exists(dir, ec)) {  // nothing to replace: one rename
    if (::rename(staged.c_str(), dir.c_str()) != 0) fail("cannot rename '" + staged + "' to it");
    sync_directory(parent_of(dir));
    return;
  }
  if (exchange(staged, dir)) {
    sync_directory(parent_of(dir));
    step("swapped");
    std::error_code ignored;
    fs::remove_all(staged, ignored);  // the old version; if this fails, the next writer removes it
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) fail("cannot swap '" + staged + "' with it");

  // No RENAME_EXCHANGE here: two renames, with the old version kept until the new one is in place.
  const std::string old = dir + ".old." + std::to_string(::getpid());
  std::error_code ignored;
  fs::remove_all(old, ignored);
  if (::rename(dir.c_str(), old.c_str()) != 0) fail("cannot move it aside to '" + old + "'");
  try {
    step("moved-old-aside");
  } catch (...) {
    ::rename(old.c_str(), dir.c_str());
    fs::remove_all(staged, ignored);
    throw;
  }
  if (::rename(staged.c_str(), dir.c_str()) != 0) {
    const std::string reason = errno_text();
    ::rename(old.c_str(), dir.c_str());  // put the previous version back
    fs::remove_all(staged, ignored);
    throw IOError(op + ": '" + dir + "': cannot rename '" + staged + "' to it: " + reason +
                  " (the previous version is unchanged)");
  }
  sync_directory(parent_of(dir));
  fs::remove_all(old, ignored);
}

void link_tree(const std::string& src, const std::string& dst) {
  std::error_code ec;
  fs::create_directory(dst, ec);
  if (ec) throw IOError("link_tree: cannot create '" + dst + "': " + ec.message());
  for (const auto& e : fs::recursive_directory_iterator(src, ec)) {
    const fs::path to = fs::path(dst) / fs::relative(e.path(), src);
    std::error_code step;
    if (e.is_directory()) {
      fs::create_directory(to, step);
    } else {
      fs::create_hard_link(e.path(), to, step);
      if (step) fs::copy_file(e.path(), to, step);
    }
    if (step) throw IOError("link_tree: '" + e.path().string() + "' -> '" + to.string() + "': " + step.message());
  }
  if (ec) throw IOError("link_tree: cannot read '" + src + "': " + ec.message());
}

}  // namespace loragrad
