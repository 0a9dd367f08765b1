#include "demo_report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>

#include "loragrad/error.hpp"
#include "loragrad/format.hpp"

namespace demo {

using loragrad::fixed;

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

void write_curves_csv(const std::string& path, const std::string& x_name,
                      const std::vector<std::pair<std::string, std::vector<Curve>>>& columns) {
  std::ofstream f = open_for_writing(path);
  f << "method," << csv_field(x_name);
  for (const auto& col : columns) f << "," << csv_field(col.first);
  f << "\n";
  // Rows in the order of the first set's curves and points.
  std::map<std::pair<std::string, double>, std::vector<double>> values;
  std::vector<std::pair<std::string, double>> order;
  for (size_t c = 0; c < columns.size(); ++c)
    for (const Curve& curve : columns[c].second)
      for (const auto& [x, y] : curve.points) {
        auto key = std::make_pair(curve.name, x);
        auto it = values.find(key);
        if (it == values.end()) {
          it = values.emplace(key, std::vector<double>(columns.size(), std::nan(""))).first;
          order.push_back(key);
        }
        it->second[c] = y;
      }
  for (const auto& key : order) {
    f << csv_field(key.first) << "," << key.second;
    for (double y : values[key]) f << "," << (std::isnan(y) ? std::string() : fixed(y, 6));
    f << "\n";
  }
  if (!f) throw loragrad::IOError("demo: writing " + path + " failed");
}

namespace {

// Colour-blind-friendly palette (Okabe-Ito; the yellow last, it is faint on white).
const char* const kColours[] = {"#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#000000", "#F0E442"};
const int kMarkers = 8;

// Marker k (circle, square, triangle up, diamond, triangle down, cross, plus, star) centred at (x, y).
std::string marker(int k, double x, double y, const char* colour) {
  const double r = 4.5;
  std::ostringstream s;
  auto pt = [&](double dx, double dy) { return fixed(x + dx, 1) + "," + fixed(y + dy, 1) + " "; };
  switch (k % kMarkers) {
    case 0:
      s << "<circle cx=\"" << fixed(x, 1) << "\" cy=\"" << fixed(y, 1) << "\" r=\"" << r << "\" fill=\"" << colour
        << "\"/>";
      break;
    case 1:
      s << "<rect x=\"" << fixed(x - r, 1) << "\" y=\"" << fixed(y - r, 1) << "\" width=\"" << 2 * r << "\" height=\""
        << 2 * r << "\" fill=\"" << colour << "\"/>";
      break;
    case 2:
      s << "<polygon points=\"" << pt(0, -r * 1.2) << pt(r * 1.1, r * 0.8) << pt(-r * 1.1, r * 0.8) << "\" fill=\""
        << colour << "\"/>";
      break;
    case 3:
      s << "<polygon points=\"" << pt(0, -r * 1.3) << pt(r * 1.1, 0) << pt(0, r * 1.3) << pt(-r * 1.1, 0)
        << "\" fill=\"" << colour << "\"/>";
      break;
    case 4:
      s << "<polygon points=\"" << pt(0, r * 1.2) << pt(r * 1.1, -r * 0.8) << pt(-r * 1.1, -r * 0.8) << "\" fill=\""
        << colour << "\"/>";
      break;
    case 5:
      s << "<path d=\"M" << pt(-r, -r) << "L" << pt(r, r) << "M" << pt(-r, r) << "L" << pt(r, -r) << "\" stroke=\""
        << colour << "\" stroke-width=\"2.5\"/>";
      break;
    case 6:
      s << "<path d=\"M" << pt(-r * 1.2, 0) << "L" << pt(r * 1.2, 0) << "M" << pt(0, -r * 1.2) << "L"
        << pt(0, r * 1.2) << "\" stroke=\"" << colour << "\" stroke-width=\"2.5\"/>";
      break;
    default: {
      s << "<polygon points=\"";
      for (int i = 0; i < 10; ++i) {
        const double a = -M_PI / 2 + i * M_PI / 5, rr = i % 2 ? r * 0.5 : r * 1.3;
        s << pt(rr * std::cos(a), rr * std::sin(a));
      }
      s << "\" fill=\"" << colour << "\"/>";
    }
  }
  return s.str() + "\n";
}

// Ticks of a log axis over [lo, hi]: m * 10^k for the first mantissa set giving at least 5 ticks.
std::vector<double> log_ticks(double lo, double hi) {
  const std::vector<std::vector<double>> sets = {
      {1}, {1, 2, 5}, {1, 2, 3, 5}, {1, 1.5, 2, 3, 4, 5, 7}, {1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9}};
  std::vector<double> ticks;
  for (const auto& set : sets) {
    ticks.clear();
    for (int k = static_cast<int>(std::floor(std::log10(lo))) - 1; k <= static_cast<int>(std::ceil(std::log10(hi)));
         ++k)
      for (double m : set) {
        const double v = m * std::pow(10.0, k);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.push_back(v);
      }
    if (ticks.size() >= 5) break;
  }
  return ticks;
}

std::string log_tick_label(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

void write_panels_svg(const std::string& path, const std::string& title, const std::string& x_label,
                      const std::vector<Panel>& panels) {
  // Canvas: panels stacked; each plot area sits inside margins; the legend goes in the right margin.
  const double W = 900, left = 80, right = 190, top = 66, ph = 280, gap = 80, bottom = 60;
  const double pw = W - left - right;
  const double n = static_cast<double>(std::max<size_t>(1, panels.size()));
  const double H = top + n * ph + (n - 1) * gap + bottom;

  // The x range is shared by every panel.
  double x0 = 0, x1 = 1;
  for (const Panel& p : panels)
    for (const Curve& c : p.curves)
      for (const auto& [x, y] : c.points) x1 = std::max(x1, x);
  const double xs = nice_step(x1 - x0, 8);
  x1 = std::ceil(x1 / xs) * xs;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };

  // One colour and marker per curve name, in order of first appearance.
  std::vector<std::string> names;
  for (const Panel& p : panels)
    for (const Curve& c : p.curves)
      if (std::find(names.begin(), names.end(), c.name) == names.end()) names.push_back(c.name);
  auto style = [&](const std::string& name) {
    return static_cast<int>(std::find(names.begin(), names.end(), name) - names.begin());
  };
  const char* const dashes[] = {"8,4", "2,3", "12,3,2,3"};

  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << left + pw / 2 << "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">" << xml_escape(title)
    << "</text>\n";

  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const Panel& p = panels[pi];
    const double ptop = top + static_cast<double>(pi) * (ph + gap);
    double y0 = std::numeric_limits<double>::infinity(), y1 = 0;
    auto extend = [&](double y) {
      if (std::isfinite(y) && y > 0) y0 = std::min(y0, y), y1 = std::max(y1, y);
    };
    for (const Curve& c : p.curves)
      for (const auto& pt : c.points) extend(pt.second);
    for (const HLine& h : p.hlines) extend(h.y);
    if (!std::isfinite(y0)) y0 = 0.1, y1 = 10;
    y0 /= 1.12;
    y1 *= 1.12;
    const double l0 = std::log10(y0), l1 = std::log10(y1);
    auto py = [&](double y) { return ptop + (l1 - std::log10(y)) / (l1 - l0) * ph; };

    s << "<text x=\"" << left + pw / 2 << "\" y=\"" << ptop - 10 << "\" text-anchor=\"middle\" font-size=\"14\">"
      << xml_escape(p.title) << "</text>\n";
    for (double x = x0; x <= x1 + xs * 1e-6; x += xs)
      s << "<line x1=\"" << px(x) << "\" y1=\"" << ptop << "\" x2=\"" << px(x) << "\" y2=\"" << ptop + ph
        << "\" stroke=\"#e6e6e6\"/>\n"
        << "<line x1=\"" << px(x) << "\" y1=\"" << ptop + ph << "\" x2=\"" << px(x) << "\" y2=\"" << ptop + ph + 5
        << "\" stroke=\"black\"/>\n"
        << "<text x=\"" << px(x) << "\" y=\"" << ptop + ph + 19 << "\" text-anchor=\"middle\">" << tick_label(x, xs)
        << "</text>\n";
    for (double y : log_ticks(y0, y1))
      s << "<line x1=\"" << left << "\" y1=\"" << fixed(py(y), 1) << "\" x2=\"" << left + pw << "\" y2=\""
        << fixed(py(y), 1) << "\" stroke=\"#e6e6e6\"/>\n"
        << "<line x1=\"" << left - 5 << "\" y1=\"" << fixed(py(y), 1) << "\" x2=\"" << left << "\" y2=\""
        << fixed(py(y), 1) << "\" stroke=\"black\"/>\n"
        << "<text x=\"" << left - 8 << "\" y=\"" << fixed(py(y) + 4, 1) << "\" text-anchor=\"end\">"
        << log_tick_label(y) << "</text>\n";
    s << "<rect x=\"" << left << "\" y=\"" << ptop << "\" width=\"" << pw << "\" height=\"" << ph
      << "\" fill=\"none\" stroke=\"black\"/>\n"
      << "<text x=\"22\" y=\"" << ptop + ph / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 22 "
      << ptop + ph / 2 << ")\">" << xml_escape(p.y_label) << "</text>\n";
    std::ostringstream labels;  // drawn over the curves
    // Reference lines, labelled at the end (left or right) where the curves pass farther from them,
    // on a white halo so that a curve under the label does not hide it.
    for (size_t i = 0; i < p.hlines.size(); ++i) {
      const HLine& h = p.hlines[i];
      if (!(h.y > 0)) continue;
      double clear_left = 1e9, clear_right = 1e9;  // nearest curve point (pixels) near each end
      for (const Curve& c : p.curves)
        for (const auto& [x, y] : c.points) {
          if (!(std::isfinite(y) && y > 0)) continue;
          const double d = std::abs(py(y) - py(h.y));
          if (px(x) < left + 0.35 * pw) clear_left = std::min(clear_left, d);
          if (px(x) > left + 0.65 * pw) clear_right = std::min(clear_right, d);
        }
      const bool at_right = clear_right >= clear_left;
      s << "<line x1=\"" << left << "\" y1=\"" << fixed(py(h.y), 1) << "\" x2=\"" << left + pw << "\" y2=\""
        << fixed(py(h.y), 1) << "\" stroke=\"#555555\" stroke-width=\"1.5\" stroke-dasharray=\"" << dashes[i % 3]
        << "\"/>\n";
      const double label_y = py(h.y) - 16 < ptop ? py(h.y) + 15 : py(h.y) - 5;  // below the line at the top edge
      labels << "<text x=\"" << (at_right ? left + pw - 6 : left + 16) << "\" y=\"" << fixed(label_y, 1)
        << "\" text-anchor=\"" << (at_right ? "end" : "start")
        << "\" fill=\"#333333\" font-size=\"11\" stroke=\"white\" stroke-width=\"3\" paint-order=\"stroke\">"
        << xml_escape(h.label) << " " << fixed(h.y, 3) << "</text>\n";
    }
    for (const Curve& c : p.curves) {
      const int k = style(c.name);
      const char* colour = kColours[k % 8];
      s << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"2\" points=\"";
      for (const auto& [x, y] : c.points)
        if (std::isfinite(y) && y > 0) s << fixed(px(x), 1) << "," << fixed(py(y), 1) << " ";
      s << "\"/>\n";
      for (const auto& [x, y] : c.points)
        if (std::isfinite(y) && y > 0) s << marker(k, px(x), py(y), colour);
    }
    s << labels.str();
  }
  // The x axis label under the last panel, and the legend.
  s << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">" << xml_escape(x_label)
    << "</text>\n";
  const double lx = left + pw + 20;
  double ly = top + 10;
  for (size_t i = 0; i < names.size(); ++i, ly += 22) {
    const char* colour = kColours[i % 8];
    s << "<line x1=\"" << lx << "\" y1=\"" << ly << "\" x2=\"" << lx + 36 << "\" y2=\"" << ly << "\" stroke=\""
      << colour << "\" stroke-width=\"2\"/>\n"
      << marker(static_cast<int>(i), lx + 18, ly, colour) << "<text x=\"" << lx + 44 << "\" y=\"" << ly + 4 << "\">"
      << xml_escape(names[i]) << "</text>\n";
  }
  std::vector<std::string> hl;
  for (const Panel& p : panels)
    for (const HLine& h : p.hlines)
      if (std::find(hl.begin(), hl.end(), h.label) == hl.end()) hl.push_back(h.label);
  for (size_t i = 0; i < hl.size(); ++i, ly += 22)
    s << "<line x1=\"" << lx << "\" y1=\"" << ly << "\" x2=\"" << lx + 36 << "\" y2=\"" << ly
      << "\" stroke=\"#555555\" stroke-width=\"1.5\" stroke-dasharray=\"" << dashes[i % 3] << "\"/>\n"
      << "<text x=\"" << lx + 44 << "\" y=\"" << ly + 4 << "\">" << xml_escape(hl[i]) << "</text>\n";
  s << "</svg>\n";

  std::ofstream f = open_for_writing(path);
  f << s.str();
  if (!f) throw loragrad::IOError("demo: writing " + path + " failed");
}

}  // namespace demo
