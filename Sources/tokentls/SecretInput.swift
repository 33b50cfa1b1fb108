import Foundation
import PKCS11

/// Reads PINs and passwords from the environment, a file or the terminal, never from argv.
enum SecretInput {
    /// Reads a secret, trying in order: the file `file` given on the command line, the
    /// environment variable `variable` (removed from this process's environment once
    /// read), then a prompt on the terminal without echo.
    ///
    /// With `confirm`, a value typed at the prompt is asked for twice and must match,
    /// as for a new PIN. With `allowEmpty` false, an empty value is an error before it
    /// reaches the token, where a wrong PIN can use up a retry.
    static func read(
        variable: String, file: String?, prompt: String, what: String, fileOption: String, confirm: Bool = false,
        allowEmpty: Bool = false
    ) throws -> SecretBytes {
        let secret: SecretBytes
        if let file {
            secret = try readFile(file, what: what, fileOption: fileOption)
            unsetenv(variable)
        } else if let value = getenv(variable) {
            secret = SecretBytes(copying: UnsafeRawBufferPointer(start: value, count: strlen(value)))
            unsetenv(variable)
        } else {
            guard let typed = try promptTerminal(prompt) else {
                throw CommandError(
                    .usage, "no \(what) given and no terminal to ask on: set \(variable) or use \(fileOption) FILE")
            }
            if confirm, !typed.isEmpty {
                guard let again = try promptTerminal("Repeat to confirm: "), again.matches(typed) else {
                    typed.wipe()
                    throw CommandError(
                        .usage, "the two entries of the \(what) differ: nothing was changed; run the command again")
                }
                again.wipe()
            }
            secret = typed
        }
        if !allowEmpty, secret.isEmpty {
            throw CommandError(.usage, "the \(what) is empty: set \(variable), use \(fileOption) FILE, or type it at the prompt")
        }
        return secret
    }

    /// Reads the first line of `path` into wiped storage; the line break is not part of it.
    static func readFile(_ path: String, what: String, fileOption: String) throws -> SecretBytes {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw CommandError(
                .failure, "cannot read the \(what) file \(path) given to \(fileOption): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        var status = stat()
        if fstat(descriptor, &status) == 0, status.st_mode & 0o077 != 0 {
            let mode = String(status.st_mode & 0o777, radix: 8)
            FileHandle.standardError.write(
                Data(
                    "tokentls: warning: the \(what) file \(path) is readable by other users (mode \(mode)): restrict it with chmod 600\n"
                        .utf8))
        }
        let capacity = 4096
        let raw = try SecretBytes(count: capacity) { buffer in
            var total = 0
            while total < capacity {
                let count = Foundation.read(descriptor, buffer.baseAddress! + total, capacity - total)
                if count < 0 {
                    throw CommandError(.failure, "cannot read the \(what) file \(path): \(String(cString: strerror(errno)))")
                }
                if count == 0 { break }
                total += count
            }
        }
        return raw.withUnsafeBytes { bytes in
            var length = 0
            while length < bytes.count, bytes[length] != 0x0A, bytes[length] != 0x0D, bytes[length] != 0 {
                length += 1
            }
            return SecretBytes(copying: UnsafeRawBufferPointer(rebasing: bytes[0..<length]))
        }
    }

    /// Asks on `/dev/tty` with echo off. Returns nil when there is no terminal.
    static func promptTerminal(_ prompt: String) throws -> SecretBytes? {
        let terminal = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard terminal >= 0 else {
            return nil
        }
        defer { close(terminal) }
        _ = prompt.withCString { write(terminal, $0, strlen($0)) }
        var original = termios()
        let hasAttributes = tcgetattr(terminal, &original) == 0
        if hasAttributes {
            var silent = original
            silent.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(terminal, TCSAFLUSH, &silent)
        }
        defer {
            if hasAttributes { tcsetattr(terminal, TCSAFLUSH, &original) }
            _ = write(terminal, "\n", 1)
        }
        let capacity = 1024
        var length = 0
        let raw = SecretBytes(count: capacity) { buffer in
            var byte: UInt8 = 0
            while length < capacity, Foundation.read(terminal, &byte, 1) == 1, byte != 0x0A, byte != 0x0D {
                buffer[length] = byte
                length += 1
            }
            byte = 0
        }
        return raw.withUnsafeBytes { SecretBytes(copying: UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
    }
}
