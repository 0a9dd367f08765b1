#include "demo_report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>

#include "loragrad/error.hpp"

namespace demo {

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

std::string format_bytes(size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  double x = static_cast<double>(bytes);
  int u = 0;
  while (x >= 1024.0 && u < 3) {
    x /= 1024.0;
    ++u;
  }
  if (u == 0) return std::to_string(bytes) + " B";
  return fixed(x, x < 10 ? 2 : x < 100 ? 1 : 0) + " " + units[u];
}

void Table::add_row(std::vector<std::string> row) {
  row.resize(header_.size());
  rows_.push_back(std::move(row));
}

void Table::print(std::ostream& os) const {
  std::vector<size_t> width(header_.size());
  for (size_t c = 0; c < header_.size(); ++c) {
    width[c] = header_[c].size();
    for (const auto& r : rows_) width[c] = std::max(width[c], r[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (size_t c = 0; c < cells.size(); ++c) {
      const std::string pad(width[c] - cells[c].size(), ' ');
      s += c == 0 ? cells[c] + pad : pad + cells[c];
      if (c + 1 < cells.size()) s += "  ";
    }
    os << s << "\n";
  };
  line(header_);
  size_t total = 0;
  for (size_t w : width) total += w + 2;
  os << std::string(total - 2, '-') << "\n";
  for (const auto& r : rows_) line(r);
}

namespace {

std::ofstream open_for_writing(const std::string& path) {
  std::ofstream f(path);
  if (!f) throw loragrad::IOError("demo: cannot write " + path);
  return f;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks over span.
double nice_step(double span, int target) {
  if (!(span > 0)) return 1.0;
  const double raw = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1.0 : f < 3.5 ? 2.0 : f < 7.5 ? 5.0 : 10.0) * mag;
}

// Shortest decimal that shows the tick value at this spacing.
std::string tick_label(double v, double step) {
  const int digits = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  return fixed(std::abs(v) < step * 1e-6 ? 0.0 : v, digits);
}

}  // namespace

void write_curves_csv(const std::string& path, const std::vector<Curve>& curves, const std::string& x_name,
                      const std::string& y_name) {
  std::ofstream f = open_for_writing(path);
  f << "method," << csv_field(x_name) << "," << csv_field(y_name) << "\n";
  for (const Curve& c : curves)
    for (const auto& [x, y] : c.points) f << csv_field(c.name) << "," << x << "," << fixed(y, 6) << "\n";
  if (!f) throw loragrad::IOError("demo: writing " + path + " failed");
}

void write_curves_svg(const std::string& path, const std::vector<Curve>& curves, const std::string& title,
                      const std::string& x_label, const std::string& y_label) {
  // Canvas: the plot area sits inside margins; the legend goes in the right margin.
  const double W = 860, H = 520, left = 80, right = 200, top = 50, bottom = 70;
  const double pw = W - left - right, ph = H - top - bottom;

  double x0 = 0, x1 = 1, y0 = std::numeric_limits<double>::infinity(), y1 = -y0;
  for (const Curve& c : curves)
    for (const auto& [x, y] : c.points) {
      if (!std::isfinite(y)) continue;
      x1 = std::max(x1, x);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  if (!std::isfinite(y0)) y0 = 0, y1 = 1;
  if (y1 - y0 < 1e-9) y0 -= 0.5, y1 += 0.5;
  const double xs = nice_step(x1 - x0, 8), ys = nice_step(y1 - y0, 6);
  x1 = std::ceil(x1 / xs) * xs;
  y0 = std::floor(y0 / ys) * ys;
  y1 = std::ceil(y1 / ys) * ys;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + (y1 - y) / (y1 - y0) * ph; };

  // Colour-blind-friendly palette (Okabe-Ito), then repeats.
  const char* colours[] = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442"};

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << left + pw / 2 << "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">" << xml_escape(title)
    << "</text>\n";
  // Grid lines and tick labels.
  for (double x = x0; x <= x1 + xs * 1e-6; x += xs) {
    s << "<line x1=\"" << px(x) << "\" y1=\"" << top << "\" x2=\"" << px(x) << "\" y2=\"" << top + ph
      << "\" stroke=\"#e0e0e0\"/>\n"
      << "<line x1=\"" << px(x) << "\" y1=\"" << top + ph << "\" x2=\"" << px(x) << "\" y2=\"" << top + ph + 5
      << "\" stroke=\"black\"/>\n"
      << "<text x=\"" << px(x) << "\" y=\"" << top + ph + 20 << "\" text-anchor=\"middle\">" << tick_label(x, xs)
      << "</text>\n";
  }
  for (double y = y0; y <= y1 + ys * 1e-6; y += ys) {
    s << "<line x1=\"" << left << "\" y1=\"" << py(y) << "\" x2=\"" << left + pw << "\" y2=\"" << py(y)
      << "\" stroke=\"#e0e0e0\"/>\n"
      << "<line x1=\"" << left - 5 << "\" y1=\"" << py(y) << "\" x2=\"" << left << "\" y2=\"" << py(y)
      << "\" stroke=\"black\"/>\n"
      << "<text x=\"" << left - 8 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">" << tick_label(y, ys)
      << "</text>\n";
  }
  // Axes and their labels.
  s << "<line x1=\"" << left << "\" y1=\"" << top + ph << "\" x2=\"" << left + pw << "\" y2=\"" << top + ph
    << "\" stroke=\"black\"/>\n"
    << "<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\"" << top + ph
    << "\" stroke=\"black\"/>\n"
    << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 20 << "\" text-anchor=\"middle\">" << xml_escape(x_label)
    << "</text>\n"
    << "<text x=\"20\" y=\"" << top + ph / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 20 " << top + ph / 2
    << ")\">" << xml_escape(y_label) << "</text>\n";
  // The curves and the legend.
  for (size_t i = 0; i < curves.size(); ++i) {
    const char* colour = colours[i % 8];
    s << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\" points=\"";
    for (const auto& [x, y] : curves[i].points)
      if (std::isfinite(y)) s << fixed(px(x), 1) << "," << fixed(py(y), 1) << " ";
    s << "\"/>\n";
    const double ly = top + 10 + 22 * static_cast<double>(i);
    s << "<line x1=\"" << left + pw + 20 << "\" y1=\"" << ly << "\" x2=\"" << left + pw + 50 << "\" y2=\"" << ly
      << "\" stroke=\"" << colour << "\" stroke-width=\"2\"/>\n"
      << "<text x=\"" << left + pw + 58 << "\" y=\"" << ly + 4 << "\">" << xml_escape(curves[i].name) << "</text>\n";
  }
  s << "</svg>\n";

  std::ofstream f = open_for_writing(path);
  f << s.str();
  if (!f) throw loragrad::IOError("demo: writing " + path + " failed");
}

}  // namespace demo
