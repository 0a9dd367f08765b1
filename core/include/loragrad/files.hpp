#pragma once
// Writing files and directories so that a crash, a kill -9 or an I/O error
// never leaves a reader with a half-written or missing result.
//
// A writer of PATH works in "PATH.tmp.<pid>" and renames it into place; a
// directory that replaces another is swapped in with one atomic
// renameat2(RENAME_EXCHANGE), so PATH holds the complete old or the complete
// new directory at every instant. What a killed writer leaves behind
// ("PATH.tmp.<pid>", "PATH.old.<pid>" of a process that no longer runs) is
// removed by the next writer of PATH, and loaders refuse such names.
#include <string>

namespace loragrad {

// "<path>.tmp.<pid of this process>".
std::string temporary_path(const std::string& path);

// True when any component of path is a writer's scratch name
// ("<name>.tmp.<digits>" or "<name>.old.<digits>").
bool is_temporary_path(const std::string& path);

// Throws IOError "<op>: '<path>' is a temporary ... left by an interrupted
// write" when is_temporary_path(path).
void refuse_temporary_path(const std::string& path, const std::string& op);

// Removes "<path>.tmp.<pid>" and "<path>.old.<pid>" (files or directories)
// whose process is gone. If path itself is missing but such a ".old" exists
// (a replace interrupted on a file system without RENAME_EXCHANGE), that
// previous version is renamed back to path instead of being removed.
void remove_stale_temporaries(const std::string& path);

// Writes bytes to path atomically: temporary file, fsync, rename, fsync of
// the directory. Errors are IOErrors that start with op and name the path.
void write_file_atomically(const std::string& path, const std::string& bytes, const std::string& op);

// Makes the complete directory `staged` appear at `dir`, replacing what is
// there. With RENAME_EXCHANGE (ext4, xfs, btrfs, tmpfs) the swap is one
// atomic step and the old directory is then deleted from `staged`'s name.
// Elsewhere: dir -> "<dir>.old.<pid>", staged -> dir, then delete the old
// one; an error in between renames the old one back, and a kill in between
// is repaired by the next remove_stale_temporaries(dir).
void replace_directory(const std::string& staged, const std::string& dir, const std::string& op);

// Recreates the tree under src at dst (which must not exist) with hard links
// to src's files (copies where the file system cannot link): a cheap snapshot
// to carry into a directory that replace_directory then swaps in.
void link_tree(const std::string& src, const std::string& dst);

// fsync of a directory (makes renames in it durable). Best effort.
void sync_directory(const std::string& dir);

namespace testing {
// Fault injection for tests: when set, called with the name of each step of
// replace_directory ("staged", "swapped", "moved-old-aside"); it may throw
// (an I/O error at that point) or _exit (a kill).
extern void (*file_step_hook)(const char* step);
// Pretend the file system has no RENAME_EXCHANGE.
extern bool force_rename_fallback;
}  // namespace testing

}  // namespace loragrad
