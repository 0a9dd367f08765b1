#pragma once
// Built-in text corpora, generated (nothing is downloaded): small grammars
// with limited vocabularies and strong structure, so a tiny byte-level
// transformer learns them within a few hundred steps, and different enough
// from each other that a model trained on one does clearly worse on another
// (a base domain to pretrain on, another to adapt to with LoRA).
//
//   stories  simple English tales: characters, places, things, feelings,
//            a fixed arc (once upon a time ... the end), paragraphs.
//   recipes  titled recipes: "Serves 4.", ingredient lists with quantities
//            and units, numbered steps with times and temperatures.
//   code     a small Python-like language: functions with indented bodies,
//            assignments, arithmetic, if/else, for loops, return.
//
// and one instruction task (prompt / response examples): recipe_questions.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "loragrad/data/jsonl.hpp"

namespace loragrad::data {

enum class Domain { stories, recipes, code };

const char* domain_name(Domain d);              // "stories", "recipes", "code"
Domain parse_domain(const std::string& name);   // ValueError listing the names

// Exactly n_bytes of text from the domain's grammar; a pure function of
// (domain, n_bytes, seed). The text is made of whole documents (a story, a
// recipe, a function) separated by blank lines; the last one is cut at n_bytes.
std::string builtin_corpus(Domain domain, size_t n_bytes, uint64_t seed);

// The built-in instruction task ("recipe-qa" on the command line): short
// questions about dishes of the recipes domain with their answers, in a fixed
// format, e.g.
//   prompt   "Q: Do you bake the Sweet Apple Pie?\nA: "
//   response "Yes, in the oven.\n"
// Five kinds of question (main ingredient, baked or not, servings, kind of
// dish, an amount from a list); each answer follows from its question. At
// most 65 bytes an example: one fits the default block size (64) whole. A
// pure function of (n_examples, seed).
std::vector<Example> recipe_questions(size_t n_examples, uint64_t seed);

}  // namespace loragrad::data
