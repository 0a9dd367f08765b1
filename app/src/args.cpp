#include "loragrad/app/args.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <sstream>

namespace loragrad::app {

namespace {
// Metavars of flags whose value is a file or directory name: never empty.
bool is_path_metavar(const std::string& metavar) {
  return metavar == "FILE" || metavar == "DIR" || metavar == "CKPT" || metavar == "OUT";
}
}  // namespace

Args::Args(std::string command, std::string summary, std::string program)
    : command_(std::move(command)), summary_(std::move(summary)), program_(std::move(program)) {
  flag("--help", "this text");
}

std::string Args::invocation() const { return program_.empty() ? command_ : program_ + " " + command_; }

void Args::option(const std::string& name, const std::string& metavar, const std::string& help,
                  const std::string& default_value) {
  specs_.push_back({name, metavar, help, default_value, true});
}

void Args::repeatable(const std::string& name, const std::string& metavar, const std::string& help) {
  specs_.push_back({name, metavar, help, "", true, true});
}

void Args::flag(const std::string& name, const std::string& help) { specs_.push_back({name, "", help, "", false}); }

const Args::Spec* Args::find(const std::string& name) const {
  for (const Spec& s : specs_)
    if (s.name == name) return &s;
  return nullptr;
}

const Args::Spec& Args::spec(const std::string& name) const {
  const Spec* s = find(name);
  if (!s) throw std::logic_error("Args: flag " + name + " was never declared");  // a bug in loragrad
  return *s;
}

bool Args::parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string name = argv[i], value;
    bool has_value = false;
    if (name.rfind("--", 0) != 0)
      throw UsageError(command_ + ": unexpected argument '" + name + "' (flags start with --; see " + invocation() +
                       " --help)");
    if (const size_t eq = name.find('='); eq != std::string::npos) {  // --steps=30
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const Spec* s = find(name);
    if (!s) throw UsageError(command_ + ": unknown flag '" + name + "' (see " + invocation() + " --help)");
    if (!s->takes_value) {
      if (has_value) throw UsageError(command_ + ": " + name + " takes no value");
      if (name == "--help") {
        std::cout << usage();
        return false;
      }
    } else if (!has_value) {
      if (i + 1 >= argc || std::string(argv[i + 1]).rfind("--", 0) == 0)
        throw UsageError(command_ + ": " + name + " expects a value (" + s->metavar + ")");
      value = argv[++i];
    }
    if (s->takes_value && value.empty() && is_path_metavar(s->metavar))
      throw UsageError(command_ + ": " + name + " expects a path (" + s->metavar + "), got ''");
    if (!s->repeatable)
      for (auto& [n, v] : values_)
        if (n == name) throw UsageError(command_ + ": " + name + " given twice");
    values_.emplace_back(name, value);
  }
  return true;
}

bool Args::given(const std::string& name) const {
  spec(name);
  for (const auto& nv : values_)
    if (nv.first == name) return true;
  return false;
}

bool Args::has(const std::string& name) const { return given(name) || !spec(name).default_value.empty(); }

bool Args::is_set(const std::string& name) const { return given(name); }

std::string Args::str(const std::string& name) const {
  for (const auto& nv : values_)
    if (nv.first == name) return nv.second;
  const Spec& s = spec(name);
  if (s.default_value.empty()) throw UsageError(command_ + ": " + name + " " + s.metavar + " is required");
  return s.default_value;
}

int64_t Args::integer(const std::string& name, int64_t lo, int64_t hi) const {
  const std::string s = str(name);
  size_t used = 0;
  long long v = 0;
  bool out_of_range = false;
  try {
    v = std::stoll(s, &used);
  } catch (const std::out_of_range&) {
    out_of_range = true;
  } catch (const std::exception&) {
    used = 0;
  }
  if (!out_of_range && (s.empty() || used != s.size()))
    throw UsageError(command_ + ": " + name + " expects an integer, got '" + s + "'");
  if (out_of_range || v < lo || v > hi)
    throw UsageError(command_ + ": " + name + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                     "], got " + s);
  return v;
}

namespace {
std::string number_text(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}
}  // namespace

double Args::real(const std::string& name, double lo, double hi, bool hi_open) const {
  const std::string s = str(name);
  // strtod, not stod: a value that underflows ("1e-400") is a number (rounded
  // towards 0, then range-checked), not an error.
  char* end = nullptr;
  const double v = s.empty() ? 0.0 : std::strtod(s.c_str(), &end);
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0])) || end != s.c_str() + s.size() || !std::isfinite(v))
    throw UsageError(command_ + ": " + name + " expects a finite number, got '" + s + "'");
  const bool too_high = hi_open ? v >= hi : v > hi;
  if (v < lo || too_high) {
    const std::string hi_text = hi == std::numeric_limits<double>::max() ? "inf" : number_text(hi);
    throw UsageError(command_ + ": " + name + " must be in [" + number_text(lo) + ", " + hi_text +
                     (hi_open ? ")" : "]") + ", got " + s);
  }
  return v;
}

std::vector<std::string> Args::list(const std::string& name) const {
  const std::string s = str(name);
  std::vector<std::string> out;
  std::string item;
  std::istringstream is(s);
  while (std::getline(is, item, ','))
    if (!item.empty()) out.push_back(item);
  if (out.empty() || s.back() == ',' || out.size() != static_cast<size_t>(std::count(s.begin(), s.end(), ',') + 1))
    throw UsageError(command_ + ": " + name + " expects a comma-separated list of names, got '" + s + "'");
  return out;
}

std::vector<std::string> Args::all(const std::string& name) const {
  spec(name);
  std::vector<std::string> out;
  for (const auto& nv : values_)
    if (nv.first == name) out.push_back(nv.second);
  return out;
}

std::string Args::usage() const {
  std::ostringstream os;
  os << "usage: " << invocation() << " [flags]\n" << summary_ << "\n\nflags:\n";
  std::vector<const Spec*> order;  // --help last
  for (const Spec& s : specs_)
    if (s.name != "--help") order.push_back(&s);
  order.push_back(find("--help"));
  for (const Spec* sp : order) {
    const Spec& s = *sp;
    std::string left = "  " + s.name + (s.takes_value ? " " + s.metavar : "");
    if (left.size() < 26) left.resize(26, ' ');
    else left += "  ";
    os << left << s.help;
    if (!s.default_value.empty()) os << " (default " << s.default_value << ")";
    if (s.repeatable) os << " (repeatable)";
    os << "\n";
  }
  if (!epilog_.empty()) os << "\n" << epilog_;
  return os.str();
}

}  // namespace loragrad::app
