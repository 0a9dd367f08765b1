// The built-in corpora: one small generative grammar per domain. Every choice
// is drawn from a loragrad::Generator, so the text is a pure function of the
// seed on every platform (std:: distributions are implementation-defined).
#include "loragrad/data/corpus.hpp"

#include <functional>
#include <vector>

#include "loragrad/error.hpp"
#include "loragrad/generator.hpp"

namespace loragrad::data {

namespace {

using Words = std::vector<std::string>;

class Picker {
 public:
  explicit Picker(uint64_t seed) : gen_(seed) {}
  int64_t below(int64_t n) { return gen_.randint(0, n); }
  int64_t between(int64_t lo, int64_t hi) { return gen_.randint(lo, hi + 1); }  // [lo, hi]
  bool chance(double p) { return gen_.uniform() < p; }
  const std::string& pick(const Words& xs) { return xs[static_cast<size_t>(below(static_cast<int64_t>(xs.size())))]; }
  // A word of xs other than `not_this`.
  const std::string& pick_other(const Words& xs, const std::string& not_this) {
    for (;;) {
      const std::string& w = pick(xs);
      if (w != not_this) return w;
    }
  }
  // k distinct indices into a list of n, in random order.
  std::vector<size_t> distinct(size_t n, size_t k) {
    std::vector<size_t> idx(n);
    for (size_t i = 0; i < n; ++i) idx[i] = i;
    for (size_t i = 0; i < k; ++i) std::swap(idx[i], idx[i + static_cast<size_t>(below(static_cast<int64_t>(n - i)))]);
    idx.resize(k);
    return idx;
  }

 private:
  Generator gen_;
};

std::string capitalized(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

// ---- stories ----

struct Character {
  std::string name, kind, adj, he;  // he: "he" or "she"
};

std::string story(Picker& r) {
  static const Words boys = {"Tom", "Sam", "Ben", "Max", "Leo", "Jack"};
  static const Words girls = {"Mia", "Lily", "Anna", "Lucy", "Emma", "Zoe"};
  static const Words kinds = {"cat", "dog", "fox", "bunny", "bear", "bird", "frog", "duck"};
  static const Words adjs = {"little", "happy", "brave", "kind", "shy", "curious", "small", "sleepy"};
  static const Words places = {"park", "forest", "garden", "river", "farm", "beach", "hill", "town"};
  static const Words at_places = {"in the", "in the", "in the", "by the", "on the", "on the", "on the", "in the"};
  static const Words things = {"ball", "kite", "box", "apple", "hat", "book", "stone", "cake", "boat", "flower"};
  static const Words colors = {"red", "blue", "big", "shiny", "old", "yellow", "soft", "green"};
  static const Words feelings = {"happy", "sad", "scared", "excited", "proud", "surprised"};
  static const Words problems = {"too high", "too far", "too heavy", "stuck in a tree", "under the water"};

  auto character = [&](const std::string& other_name) {
    Character c;
    const bool boy = r.chance(0.5);
    c.name = r.pick_other(boy ? boys : girls, other_name);
    c.he = boy ? "he" : "she";
    c.kind = r.pick(kinds);
    c.adj = r.pick(adjs);
    return c;
  };
  const Character a = character("");
  const Character b = character(a.name);
  const size_t where = static_cast<size_t>(r.below(static_cast<int64_t>(places.size())));
  const std::string place = places[where], at_place = at_places[where] + " " + place;
  const std::string thing = r.pick(things), color = r.pick(colors);
  const std::string His = a.he == "he" ? "His" : "Her";

  std::string s;
  s += "Once upon a time, there was a " + a.adj + " " + a.kind + " named " + a.name + ". ";
  s += r.chance(0.5) ? capitalized(a.he) + " lived near a big " + place + ". "
                     : capitalized(a.he) + " lived in a small house by the " + place + ". ";
  s += His + " best friend was a " + b.adj + " " + b.kind + " named " + b.name + ".\n";

  // The middle: a find, a problem, help, and a feeling, with optional colour.
  s += "One day, " + a.name + " found a " + color + " " + thing + " " + at_place + ". ";
  if (r.chance(0.4)) s += "The sun was " + std::string(r.chance(0.5) ? "warm" : "bright") + " and the sky was blue. ";
  s += a.name + " wanted to play with the " + thing + ", but it was " + r.pick(problems) + ". ";
  s += a.name + " felt " + r.pick(feelings) + ". ";
  if (r.chance(0.7)) {
    s += "\"Can you help me, " + b.name + "?\" asked " + a.name + ". ";
    s += "\"Yes, I can help you!\" said " + b.name + ". ";
  } else {
    s += a.name + " asked " + b.name + " for help. ";
  }
  s += r.chance(0.5) ? "They worked together and got the " + thing + ".\n"
                     : b.name + " was very " + std::string(r.chance(0.5) ? "smart" : "strong") + " and got the " +
                           thing + " for " + a.name + ".\n";

  switch (r.below(3)) {
    case 0: s += "In the end, " + a.name + " and " + b.name + " played with the " + thing + " all day. "; break;
    case 1: s += "From that day on, " + a.name + " and " + b.name + " were the best of friends. "; break;
    default: s += a.name + " said thank you, and they went home " + std::string(r.chance(0.5) ? "happy" : "together") + ". ";
  }
  s += "The end.\n";
  return s;
}

// ---- recipes ----

struct Ingredient {
  std::string name;
  Words amounts;  // e.g. "2 cups", "1/2 tsp"; empty means a plain count ("2 eggs")
};

// A dish's name: "Spicy Carrot Stew" (shared by the recipes and their questions).
const Words kDishAdjs = {"Quick", "Easy", "Sweet", "Spicy", "Simple", "Warm", "Fresh", "Creamy"};
const Words kMains = {"Tomato", "Chicken", "Apple", "Potato", "Lemon", "Carrot", "Bean", "Mushroom", "Cheese", "Rice"};
const Words kBaked = {"Pie", "Bread", "Cake", "Tart"};
const Words kCooked = {"Soup", "Salad", "Stew", "Pasta", "Curry"};

std::string lowercase_first(std::string s) {
  if (!s.empty() && s[0] >= 'A' && s[0] <= 'Z') s[0] = static_cast<char>(s[0] - 'A' + 'a');
  return s;
}

std::string recipe(Picker& r) {
  const Words& adjs = kDishAdjs;
  const Words& mains = kMains;
  const Words& baked = kBaked;
  const Words& cooked = kCooked;
  static const std::vector<Ingredient> pantry = {
      {"flour", {"1 cup", "2 cups", "200 g", "250 g"}},
      {"sugar", {"1/2 cup", "1 cup", "2 tbsp", "100 g"}},
      {"butter", {"2 tbsp", "3 tbsp", "50 g", "100 g"}},
      {"olive oil", {"1 tbsp", "2 tbsp", "3 tbsp"}},
      {"salt", {"1/2 tsp", "1 tsp", "1 pinch"}},
      {"black pepper", {"1/4 tsp", "1/2 tsp", "1 pinch"}},
      {"garlic", {"2 cloves", "3 cloves", "4 cloves"}},
      {"milk", {"1/2 cup", "1 cup", "250 ml", "500 ml"}},
      {"water", {"1 cup", "2 cups", "500 ml", "1 l"}},
      {"onions", {}},
      {"eggs", {}},
      {"carrots", {}},
      {"cream", {"100 ml", "200 ml", "1/2 cup"}},
      {"honey", {"1 tbsp", "2 tbsp"}},
  };

  const std::string main = r.pick(mains);
  const bool bake = r.chance(0.4);
  const std::string dish = r.pick(bake ? baked : cooked);
  std::string s = "Recipe: " + r.pick(adjs) + " " + main + " " + dish + "\n";
  s += "Serves " + std::to_string(r.between(2, 8)) + ". Prep time: " + std::to_string(5 * r.between(1, 6)) +
       " min. Cook time: " + std::to_string(5 * r.between(2, 18)) + " min.\n";

  s += "Ingredients:\n";
  std::string main_lower = main;
  main_lower[0] = static_cast<char>(main_lower[0] - 'A' + 'a');
  const int64_t cups = r.between(1, 4);
  s += "- " + std::to_string(cups) + (cups == 1 ? " cup " : " cups ") + main_lower + "\n";
  std::vector<std::string> used = {main_lower};
  for (size_t i : r.distinct(pantry.size(), static_cast<size_t>(r.between(3, 6)))) {
    const Ingredient& ing = pantry[i];
    s += "- " + (ing.amounts.empty() ? std::to_string(r.between(2, 6)) : r.pick(ing.amounts)) + " " + ing.name + "\n";
    used.push_back(ing.name);
  }

  s += "Steps:\n";
  std::vector<std::string> steps;
  const std::string heat = r.pick({"low", "medium", "high"});
  if (bake) steps.push_back("Preheat the oven to " + r.pick({"160", "180", "200", "220"}) + " C.");
  else steps.push_back("Heat the " + std::string(r.chance(0.5) ? "olive oil" : "butter") + " in a large pan over " + heat + " heat.");
  const int n_middle = static_cast<int>(r.between(2, 4));
  for (int k = 0; k < n_middle; ++k) {
    const std::string& x = r.pick(used);
    const std::string& y = r.pick_other(used, x);
    switch (r.below(6)) {
      case 0: steps.push_back("Chop the " + x + " and the " + y + "."); break;
      case 1: steps.push_back("Add the " + x + " and stir for " + std::to_string(r.between(1, 10)) + " minutes."); break;
      case 2: steps.push_back("Mix the " + x + " with the " + y + " in a bowl."); break;
      case 3: steps.push_back("Season with salt and pepper."); break;
      case 4: steps.push_back("Simmer for " + std::to_string(5 * r.between(1, 8)) + " minutes, stirring often."); break;
      default: steps.push_back("Slowly pour in the " + x + "."); break;
    }
  }
  if (bake) steps.push_back("Bake for " + std::to_string(5 * r.between(3, 12)) + " minutes until golden.");
  steps.push_back("Serve " + r.pick({"warm", "hot", "cold"}) + " with " + r.pick({"bread", "rice", "a green salad"}) + ".");
  for (size_t i = 0; i < steps.size(); ++i) s += std::to_string(i + 1) + ". " + steps[i] + "\n";
  return s;
}

// ---- recipe questions (instruction data) ----

// One question about a dish and its answer, at most 65 bytes together (the
// default block size, 64 positions, holds a whole example). Every answer
// follows from the question (a copy, a lookup in the grammar's own rules), so
// a tiny model can learn the task, and the fixed phrasing shows whether the
// format was learned.
Example recipe_question(Picker& r) {
  const std::string main = r.pick(kMains);
  const bool bake = r.chance(0.4);
  const std::string dish = r.pick(bake ? kBaked : kCooked);
  const std::string name = r.pick(kDishAdjs) + " " + main + " " + dish;  // at most 21 bytes
  Example e;
  switch (r.below(5)) {
    case 0:
      e.prompt = "Q: Main ingredient of " + name + "?\nA: ";
      e.response = "Mostly " + lowercase_first(main) + ".\n";
      break;
    case 1:
      e.prompt = "Q: Do you bake the " + name + "?\nA: ";
      e.response = bake ? "Yes, in the oven.\n" : "No, in a pan.\n";
      break;
    case 2: {
      const std::string n = std::to_string(r.between(2, 8));
      e.prompt = "Q: " + name + " serves " + n + ". How many?\nA: ";
      e.response = n + " people.\n";
      break;
    }
    case 3:
      e.prompt = "Q: What kind of dish is " + name + "?\nA: ";
      e.response = "A " + lowercase_first(dish) + ".\n";
      break;
    default: {
      static const Words things = {"salt", "sugar", "butter", "honey", "pepper", "flour"};
      static const Words amounts = {"1 tsp", "2 tsp", "3 tsp", "1 tbsp", "2 tbsp", "3 tbsp"};
      const std::vector<size_t> two = r.distinct(things.size(), 2);
      const std::string& a = things[two[0]];
      const std::string& b = things[two[1]];
      const std::string amount_a = r.pick(amounts), amount_b = r.pick(amounts);
      const bool ask_a = r.chance(0.5);
      e.prompt = "Q: " + amount_a + " " + a + ", " + amount_b + " " + b + ". How much " + (ask_a ? a : b) + "?\nA: ";
      e.response = (ask_a ? amount_a : amount_b) + ".\n";
    }
  }
  return e;
}

// ---- code ----

std::string function(Picker& r) {
  static const Words verbs = {"get", "add", "count", "find", "make", "update", "scale", "sum", "check", "load"};
  static const Words nouns = {"total", "items", "value", "score", "size", "price", "index", "speed", "width", "count"};
  static const Words arg_names = {"x", "y", "n", "a", "b", "size", "rate", "step"};
  static const Words locals = {"total", "result", "value", "temp", "acc", "best"};
  static const Words ops = {"+", "-", "*", "//"};

  const std::string fname = r.pick(verbs) + "_" + r.pick(nouns);
  std::vector<std::string> vars;
  for (size_t i : r.distinct(arg_names.size(), static_cast<size_t>(r.between(1, 3)))) vars.push_back(arg_names[i]);
  std::string s = "def " + fname + "(";
  for (size_t i = 0; i < vars.size(); ++i) s += (i ? ", " : "") + vars[i];
  s += "):\n";
  const size_t n_args = vars.size();

  auto operand = [&]() { return r.chance(0.6) ? r.pick(vars) : std::to_string(r.between(1, 10)); };
  const int n_statements = static_cast<int>(r.between(2, 4));
  for (int k = 0; k < n_statements; ++k) {
    switch (k == 0 ? 0 : r.below(5)) {
      case 0: {  // a new local from an expression
        const std::string& v = r.pick(locals);
        const std::string rhs = r.pick(vars) + " " + r.pick(ops) + " " + operand();
        s += "    " + v + " = " + rhs + "\n";
        bool known = false;
        for (const std::string& w : vars) known = known || w == v;
        if (!known) vars.push_back(v);
        break;
      }
      case 1: {
        const std::string& v = r.pick(vars);
        const std::string limit = std::to_string(r.between(1, 20));
        s += "    if " + v + " > " + limit + ":\n";
        s += "        " + v + " = " + v + " - " + limit + "\n";
        s += "    else:\n";
        s += "        " + v + " = " + v + " + 1\n";
        break;
      }
      case 2: {
        const std::string& v = r.pick(vars);
        s += "    for i in range(" + (r.chance(0.5) ? r.pick(vars) : std::to_string(r.between(2, 10))) + "):\n";
        s += "        " + v + " = " + v + " + i\n";
        break;
      }
      case 3: s += "    print(" + r.pick(vars) + ")\n"; break;
      default: s += "    " + r.pick(vars) + " += " + std::to_string(r.between(1, 9)) + "\n"; break;
    }
  }
  s += "    return " + vars.back() + "\n";
  if (r.chance(0.5)) {  // a call at top level
    s += "\nprint(" + fname + "(";
    for (size_t i = 0; i < n_args; ++i) s += (i ? ", " : "") + std::to_string(r.between(0, 99));
    s += "))\n";
  }
  return s;
}

}  // namespace

const char* domain_name(Domain d) {
  switch (d) {
    case Domain::stories: return "stories";
    case Domain::recipes: return "recipes";
    case Domain::code: return "code";
  }
  return "?";
}

Domain parse_domain(const std::string& name) {
  for (Domain d : {Domain::stories, Domain::recipes, Domain::code})
    if (name == domain_name(d)) return d;
  throw ValueError("parse_domain: unknown domain '" + name + "' (expected stories, recipes or code)");
}

std::vector<Example> recipe_questions(size_t n_examples, uint64_t seed) {
  Picker r(seed * 3 + 1000003);  // a stream apart from the three domains'
  std::vector<Example> out;
  out.reserve(n_examples);
  for (size_t i = 0; i < n_examples; ++i) out.push_back(recipe_question(r));
  return out;
}

std::string builtin_corpus(Domain domain, size_t n_bytes, uint64_t seed) {
  // Each domain draws from its own stream of the seed, so the domains of one
  // seed are unrelated.
  Picker r(seed * 3 + static_cast<uint64_t>(domain));
  std::function<std::string(Picker&)> document;
  switch (domain) {
    case Domain::stories: document = story; break;
    case Domain::recipes: document = recipe; break;
    case Domain::code: document = function; break;
  }
  std::string out;
  out.reserve(n_bytes + 1024);
  while (out.size() < n_bytes) {
    if (!out.empty()) out += "\n";
    out += document(r);
  }
  out.resize(n_bytes);
  return out;
}

}  // namespace loragrad::data
