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

// "method,x,y1,y2,..." rows, with a header line: one column per named set of
// curves (the sets hold the same methods at the same x; a missing value is empty).
void write_curves_csv(const std::string& path, const std::string& x_name,
                      const std::vector<std::pair<std::string, std::vector<Curve>>>& columns);

// A horizontal reference line (e.g. the pretrained model's loss, a baseline).
struct HLine {
  std::string label;
  double y = 0;
};

// One plot: its curves on a log-scale y axis, and reference lines.
struct Panel {
  std::string title, y_label;
  std::vector<Curve> curves;
  std::vector<HLine> hlines;
};

// A standalone SVG: the panels stacked over one x axis label, each with a log
// y axis, grid, ticks and numbers, its title and reference lines (dashed,
// labelled); every curve has its own colour and marker, shown in one legend
// (curves with the same name share them across panels). Both writers throw
// loragrad::IOError naming the path when it cannot be written.
void write_panels_svg(const std::string& path, const std::string& title, const std::string& x_label,
                      const std::vector<Panel>& panels);

}  // namespace demo
