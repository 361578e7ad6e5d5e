// Error type of genrec: every failure is an exception whose message names the cause
// (the file and line of bad data, the option that is wrong, the op that failed).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace genrec {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace genrec

// Checks an invariant and throws genrec::Error with a formatted message when it does not hold.
#define GENREC_CHECK(cond, ...)               \
  do {                                        \
    if (!(cond)) ::genrec::fail(__VA_ARGS__); \
  } while (0)
