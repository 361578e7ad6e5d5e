// Little-endian binary encoding for genrec's file formats (shards, checkpoints, table dumps):
// values are appended to and read from byte strings in host order, which the formats require
// to be little-endian.
#pragma once

#include <bit>
#include <cstddef>
#include <cstring>
#include <string>

namespace genrec {

static_assert(std::endian::native == std::endian::little, "genrec files are little-endian");

template <typename T>
void put(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

template <typename T>
void put_array(std::string& out, const T* values, size_t count) {
  out.append(reinterpret_cast<const char*>(values), count * sizeof(T));
}

template <typename T>
T get(const char* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

}  // namespace genrec
