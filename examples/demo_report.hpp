#pragma once
// The demo's output helpers: a plain-text table, loss curves as CSV and as a
// hand-written SVG line plot. Nothing here knows about models.
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <utility>
#include <vector>

namespace demo {

// "512 B", "12.0 KiB", "1.50 MiB": binary units, 3 significant digits.
std::string format_bytes(size_t bytes);
// printf("%.*f") into a std::string.
std::string fixed(double x, int digits);

// Columns sized to their widest cell; the first column left-aligned, the others right-aligned.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void add_row(std::vector<std::string> row);  // as many cells as the header
  void print(std::ostream& os) const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// One line of a plot: (x, y) points in x order.
struct Curve {
  std::string name;
  std::vector<std::pair<double, double>> points;
};

// "curve,x,y" rows, with a header line naming x and y.
void write_curves_csv(const std::string& path, const std::vector<Curve>& curves, const std::string& x_name,
                      const std::string& y_name);

// A standalone SVG: one polyline per curve, axes with ticks and numbers,
// axis labels, a title and a legend. Both writers throw loragrad::IOError
// naming the path when it cannot be written.
void write_curves_svg(const std::string& path, const std::vector<Curve>& curves, const std::string& title,
                      const std::string& x_label, const std::string& y_label);

}  // namespace demo
