// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title DividendDistributor
/// @notice Receives dividends for a master and announces them.
contract DividendDistributor is Ownable {
    event DividendDeposited(bytes16 indexed masterId, uint256 amount);

    constructor(address owner_) Ownable(owner_) {}

    /// @notice Deposit ETH as dividend for `masterId`; emits msg.value.
    function deposit(bytes16 masterId) external payable {
        emit DividendDeposited(masterId, msg.value);
    }

    /// @notice Emit an arbitrary amount without moving ETH (owner only; used by tests,
    ///         e.g. to emit type(uint256).max).
    function record(bytes16 masterId, uint256 amount) external onlyOwner {
        emit DividendDeposited(masterId, amount);
    }
}
