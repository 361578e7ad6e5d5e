#include "core/logging.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace genrec {
namespace {

LogLevel level_from_env() {
  const char* env = std::getenv("GENREC_LOG");
  if (env == nullptr) return LogLevel::kInfo;
  if (std::strcmp(env, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(env, "warn") == 0) return LogLevel::kWarn;
  if (std::strcmp(env, "error") == 0) return LogLevel::kError;
  return LogLevel::kInfo;
}

LogLevel g_level = level_from_env();
std::mutex g_mutex;
const auto g_start = std::chrono::steady_clock::now();

}  // namespace

LogLevel log_level() {
  return g_level;
}
void set_log_level(LogLevel level) {
  g_level = level;
}

void log_write(LogLevel level, std::string_view message) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "[%8.2fs %-5s] %.*s\n", seconds, names[static_cast<int>(level)],
               static_cast<int>(message.size()), message.data());
}

}  // namespace genrec
