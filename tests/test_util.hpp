#pragma once
// Small helpers shared by the Boost.Test files.
#include <boost/test/unit_test.hpp>

#include <exception>
#include <string>
#include <vector>

// f() must throw an E whose message contains every one of parts.
template <class E, class F>
void check_throws(F f, const std::vector<std::string>& parts) {
  try {
    f();
    BOOST_ERROR("expected an exception mentioning '" << parts[0] << "'");
  } catch (const E& e) {
    for (const auto& p : parts)
      BOOST_CHECK_MESSAGE(std::string(e.what()).find(p) != std::string::npos,
                          "message '" << e.what() << "' lacks '" << p << "'");
  } catch (const std::exception& e) {
    BOOST_ERROR("wrong exception type, message: " << e.what());
  }
}
