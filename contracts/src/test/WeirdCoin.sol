// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

/// @title WeirdCoin (TEST ONLY)
/// @notice A token whose metadata calls return hostile data, for bad-input tests.
/// @dev `name()` / `symbol()` return `rawName` / `rawSymbol` verbatim as the whole return data
///      (no ABI encoding added): pass abi.encode("x") for a well-formed string, a 32-byte word
///      for a bytes32-style name, or anything else (NUL bytes, invalid UTF-8, truncated data).
contract WeirdCoin {
    bytes private rawName;
    bytes private rawSymbol;
    uint256 public totalSupply;
    uint8 public decimals;
    bool public nameReverts;
    bool public symbolReverts;

    constructor(
        bytes memory rawName_,
        bytes memory rawSymbol_,
        uint256 totalSupply_,
        uint8 decimals_,
        bool nameReverts_
    ) {
        rawName = rawName_;
        rawSymbol = rawSymbol_;
        totalSupply = totalSupply_;
        decimals = decimals_;
        nameReverts = nameReverts_;
    }

    function setReverts(bool nameReverts_, bool symbolReverts_) external {
        nameReverts = nameReverts_;
        symbolReverts = symbolReverts_;
    }

    function setTotalSupply(uint256 totalSupply_) external {
        totalSupply = totalSupply_;
    }

    function name() external view returns (string memory) {
        require(!nameReverts, "name reverts");
        _returnRaw(rawName);
    }

    function symbol() external view returns (string memory) {
        require(!symbolReverts, "symbol reverts");
        _returnRaw(rawSymbol);
    }

    function _returnRaw(bytes memory raw) private pure {
        assembly {
            return(add(raw, 0x20), mload(raw))
        }
    }
}
