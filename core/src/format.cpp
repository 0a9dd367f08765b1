#include "loragrad/format.hpp"

#include <cstdio>

namespace loragrad {

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

std::string with_commas(int64_t n) {
  // Digits of |n| without negating n (INT64_MIN has no positive int64_t).
  std::string digits = std::to_string(n);
  if (n < 0) digits.erase(0, 1);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  if (u == 0) return std::to_string(static_cast<int64_t>(bytes)) + " B";
  // 3 significant digits; a value that rounds up to 1024 stays in this unit ("1024 KiB" is rare and exact enough).
  return fixed(bytes, bytes < 9.995 ? 2 : bytes < 99.95 ? 1 : 0) + " " + units[u];
}

}  // namespace loragrad
