#pragma once
// Numbers as people read them, in one place for every program and report:
// the CLI's tables, the trainer's memory line, the demo, PEFT-style summaries.
#include <cstdint>
#include <string>

namespace loragrad {

// printf("%.*f", digits, x) into a std::string: fixed(3.14159, 2) == "3.14".
std::string fixed(double x, int digits);
// 1234567 -> "1,234,567", as Python's f"{n:,d}".
std::string with_commas(int64_t n);
// Binary units with 3 significant digits: "512 B", "12.0 KiB", "1.50 MiB", "264 MiB", "2.00 GiB".
std::string format_bytes(double bytes);

}  // namespace loragrad
