// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "TokenTLS",
    products: [
        .library(name: "TokenTLS", targets: ["TokenTLS"]),
        .library(name: "TokenStore", targets: ["TokenStore"]),
        .library(name: "PKCS11", targets: ["PKCS11"]),
        .executable(name: "tokentls", targets: ["tokentls"]),
    ],
    targets: [
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CP11Kit",
            pkgConfig: "p11-kit-1",
            providers: [.apt(["libp11-kit-dev"])]
        ),
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        .target(
            name: "CShims",
            dependencies: ["COpenSSL", "CCurl"]
        ),
        .target(
            name: "CTokenProvider",
            dependencies: ["COpenSSL"]
        ),
        .target(
            name: "PKCS11",
            dependencies: ["CP11Kit"]
        ),
        .target(
            name: "TokenStore",
            dependencies: ["PKCS11", "CP11Kit", "COpenSSL", "CShims"]
        ),
        .target(
            name: "TokenTLS",
            dependencies: ["TokenStore", "PKCS11", "CP11Kit", "COpenSSL", "CCurl", "CShims", "CTokenProvider"]
        ),
        .executableTarget(
            name: "tokentls",
            dependencies: ["TokenTLS", "TokenStore", "PKCS11", "CP11Kit", "COpenSSL"]
        ),
        .executableTarget(
            name: "tokentls-bench",
            dependencies: ["TokenTLS", "TokenStore", "PKCS11", "CP11Kit", "COpenSSL", "CShims", "CTokenProvider"],
            path: "Benchmarks/tokentls-bench"
        ),
        .executableTarget(
            name: "tokentls-fork-check",
            dependencies: ["TokenTLS", "TokenStore", "PKCS11", "CShims"],
            path: "Tests/ForkCheck"
        ),
        .target(
            name: "TestSupport",
            dependencies: ["TokenStore", "PKCS11"],
            path: "Tests/TestSupport"
        ),
        .testTarget(
            name: "PKCS11Tests",
            dependencies: ["PKCS11"]
        ),
        .testTarget(
            name: "TokenStoreTests",
            dependencies: ["TokenStore", "PKCS11", "CP11Kit", "COpenSSL", "CShims", "TestSupport"]
        ),
        .testTarget(
            name: "TokenTLSTests",
            dependencies: ["TokenTLS", "TokenStore", "PKCS11", "CP11Kit", "COpenSSL", "CShims", "CTokenProvider", "TestSupport"]
        ),
    ]
)
